"""The backend contract (``tests/test_backend_contract.py``), run on the sglang backend."""

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed here: backends/sglang/install_cpu_env.sh makes its venv")

from tests.test_backend_contract import (  # noqa: E402,F401 - collected here with this directory's ``backend``
    test_a_prompt_too_long_for_the_budget_is_refused_before_generating,
    test_backend_meets_the_protocol,
    test_generate_returns_one_result_per_request_through_on_batch,
    test_greedy_generation_is_deterministic,
    test_model_info_has_the_facts_the_harness_needs,
    test_text_round_trips_and_chat_wraps_the_prompt,
)
