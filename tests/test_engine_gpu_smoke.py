"""``benchmarks/engine_gpu_smoke.py``'s verdicts on hand-made results: each check fails on what it names. The
script end to end on the CPU engines: ``tests/vllm/test_gpu_smoke.py``, ``tests/sglang/test_gpu_smoke.py``."""

from __future__ import annotations

import benchmarks.engine_gpu_smoke as smoke
from backends.base import SequenceResult


def result(rid: str, ids: list[int], compressions: int = 0, freed: int = 0, **extra) -> SequenceResult:
    return SequenceResult(request_id=rid, output_ids=ids, text="", finish_reason="eos", prompt_tokens=3,
                          generated_tokens=len(ids), ttft_s=0.0, decode_s=1.0, kv_peak_tokens=0, kv_peak_bytes=0,
                          kv_full_bytes=0, compressions=compressions, policy_s=0.0,
                          extra={"kv_freed_blocks": freed, **extra})


def test_full_tokens_pass_only_when_every_problem_matches():
    reference = [result("a", [1, 2]), result("b", [3])]
    assert smoke.check_full_tokens([result("a", [1, 2]), result("b", [3])], reference).passed
    verdict = smoke.check_full_tokens([result("a", [1, 2]), result("b", [4])], reference)
    assert not verdict.passed and "1/2" in verdict.detail and "b" in verdict.detail
    assert not smoke.check_full_tokens([result("a", [1, 2])], reference).passed  # a problem missing


def test_dynts_accuracy_allows_the_stated_points_either_way():
    assert smoke.check_dynts_accuracy(97.0, 100.0, 3.0, 86).passed
    assert smoke.check_dynts_accuracy(100.0, 97.0, 3.0, 86).passed
    assert not smoke.check_dynts_accuracy(96.9, 100.0, 3.0, 86).passed


def test_the_pool_check_fails_on_a_silent_compaction_a_leak_or_a_stopped_engine():
    good = [result("a", [1], compressions=2, freed=2), result("b", [1])]
    assert smoke.check_pool(good, 40, 40, True, [(10, 11, 1), (11, 12, 1)]).passed
    assert smoke.check_pool(good, None, None, True).passed  # SGLang: the engine's own leak check
    assert not smoke.check_pool([result("a", [1], compressions=2, freed=0)], 40, 40, True).passed
    assert not smoke.check_pool(good, 40, 39, True).passed  # a block never came back
    assert not smoke.check_pool(good, None, None, False).passed  # the engine stopped serving
    assert not smoke.check_pool(good, 40, 40, True, [(10, 10, 1), (11, 12, 1)]).passed  # no rise at one
    assert not smoke.check_pool(good, 40, 40, True, [(10, 11, 1)]).passed  # a compaction the pool never saw
    assert not smoke.check_pool([result("a", [1])], 40, 40, True).passed  # nothing compacted: nothing checked


def test_throughput_is_reported_side_by_side_as_ratios_to_full():
    rows = {"full": smoke.throughput_row([result("a", [1] * 50, preemptions=3)], 10.0),
            "window": smoke.throughput_row([result("a", [1] * 50)], 5.0)}
    verdict = smoke.check_throughput(rows, "m")
    assert verdict.passed is None and verdict.line().startswith("INFO")
    assert "full 5.0 tok/s (1.00x, 3 preemptions)" in verdict.detail and "window 10.0 tok/s (2.00x" in verdict.detail


def test_the_command_line_takes_every_setting():
    settings, out = smoke.parse(["--backend", "sglang", "--problems", "3", "--device", "cpu", "--json", "x.json"])
    assert (settings.backend, settings.problems, settings.device, str(out)) == ("sglang", 3, "cpu", "x.json")
