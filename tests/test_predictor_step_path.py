"""The DynTS head's per-step path (``ImportancePredictor.score``) computes exactly what its modules do."""

from __future__ import annotations

import pytest
import torch

from zoo.predictor import ImportancePredictor, PredictorConfig


@pytest.mark.parametrize("sizes", [[256, 64], [32], [64, 16, 8]])
def test_score_equals_the_module_forward_and_builds_no_graph(sizes):
    torch.manual_seed(0)
    head = ImportancePredictor(PredictorConfig(base_model="test", hidden_size=128, layer_sizes=sizes))
    hidden = torch.randn(4, 3, 128, requires_grad=True)
    expected = head(hidden)
    got = head.score(hidden)
    assert torch.equal(got, expected.detach())
    assert not got.requires_grad and got.shape == (4, 3)


def test_score_casts_the_hidden_states_to_the_heads_dtype():
    head = ImportancePredictor(PredictorConfig(base_model="test", hidden_size=16, layer_sizes=[8])).to(torch.float64)
    hidden = torch.randn(2, 16, dtype=torch.float32)
    assert head.score(hidden).dtype == torch.float64
    assert torch.equal(head.score(hidden), head(hidden).detach())
