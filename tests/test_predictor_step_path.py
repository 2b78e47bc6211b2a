"""The DynTS head's forward and per-step path (``ImportancePredictor.score``) compute exactly what its modules
(``mlp``, Linear and Softplus) do."""

from __future__ import annotations

import pytest
import torch

from zoo.predictor import ImportancePredictor, PredictorConfig


@pytest.mark.parametrize("sizes", [[256, 64], [32], [64, 16, 8]])
def test_forward_and_score_equal_the_module_stack_and_score_builds_no_graph(sizes):
    torch.manual_seed(0)
    head = ImportancePredictor(PredictorConfig(base_model="test", hidden_size=128, layer_sizes=sizes))
    hidden = torch.randn(4, 3, 128, requires_grad=True)
    expected = head.mlp(hidden).squeeze(-1)
    assert torch.equal(head(hidden), expected)
    got = head.score(hidden)
    assert torch.equal(got, expected.detach())
    assert not got.requires_grad and got.shape == (4, 3)


def test_score_casts_the_hidden_states_to_the_heads_dtype():
    head = ImportancePredictor(PredictorConfig(base_model="test", hidden_size=16, layer_sizes=[8])).to(torch.float64)
    hidden = torch.randn(2, 16, dtype=torch.float32)
    assert head.score(hidden).dtype == torch.float64
    assert torch.equal(head.score(hidden), head.mlp(hidden.to(torch.float64)).squeeze(-1).detach())
