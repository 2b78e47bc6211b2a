"""DynTS: keep the thinking tokens a learned predictor says the answer will need."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zoo.base import CacheView, ModelInfo, Policy, PolicyError, StepObservation
from zoo.predictor import ImportancePredictor

SCORE = "dynts_score"


@dataclass
class DynTS(Policy):
    """Dynamic Thinking-Token Selection (arXiv 2601.18383). A small MLP reads the final hidden state of every
    token once, as it is produced, and predicts how much the final answer will attend to it; at compression
    the lowest-scoring thinking tokens go. Prompt and window are kept by the schedule; tokens after
    ``</think>`` (the answer) score +inf. ``predictor`` is a directory written by the predictor pipeline (the
    harness fills in the one shipped for the model, when there is one)."""

    name = "dynts"
    requires = "predictor"
    needs = frozenset({"hidden"})
    state_names = (SCORE,)
    predictor: str | None = None
    _model: ImportancePredictor | None = field(default=None, init=False, repr=False)
    _source: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.predictor:
            self._model = ImportancePredictor.load(self.predictor)

    def lacks_artefact(self) -> bool:
        return self._model is None

    def provide(self, artefact: str) -> None:
        self._model = ImportancePredictor.load(artefact)
        self._source = artefact

    def artefact(self) -> str | None:
        return self._source or self.predictor

    def prepare(self, model: ModelInfo) -> None:
        if self._model is None:
            raise PolicyError(
                f"dynts needs an importance predictor trained for {model.model_id}: pass --predictor DIR "
                "(a directory with predictor.json and model.safetensors)"
            )
        self._model.check_model(model)

    def observe(self, obs: StepObservation, state: dict[str, torch.Tensor]) -> None:
        assert self._model is not None and obs.hidden is not None
        predictor = self._model.to(obs.hidden.device)
        q = obs.hidden.shape[1]
        state[SCORE][:, obs.slot_start : obs.slot_start + q] = predictor(obs.hidden).float()

    def score(self, view: CacheView) -> torch.Tensor:
        scores = view.state[SCORE]
        if view.think_end_id is not None:
            answer = (view.token_ids == view.think_end_id).long().cumsum(-1) > 0
            scores = scores.masked_fill(answer & view.valid, float("inf"))
        return scores
