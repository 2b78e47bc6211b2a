"""DynTS: keep the thinking tokens a learned predictor says the answer will need."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from zoo.base import CacheView, ModelInfo, Policy, PolicyError, StepObservation, option
from zoo.predictor import ImportancePredictor

SCORE = "dynts_score"


@dataclass
class DynTS(Policy):
    """Dynamic Thinking-Token Selection (arXiv 2601.18383). A small MLP reads the final hidden state of every
    token once, as it is produced, and predicts how much the final answer will attend to it; at compression
    the lowest-scoring thinking tokens go. Prompt and window are kept by the schedule; tokens after
    ``</think>`` (the answer) score +inf. ``predictor`` is a directory written by the predictor pipeline (the
    harness fills in the one shipped for the model, when there is one). Two ranking options (ours) act on the
    write-time scores at compression, ``pool_next`` and ``recency``: by default the predictor's own
    (``selection`` in its ``predictor.json``, one setting or a table by budget, see ``stored_selection``), and the
    paper's ranking for a predictor without them.

    A *lifetime* head (``target`` in its ``predictor.json``, ours) predicts, as log(1 + tokens), how long after its
    own position a token stays needed. Its compaction score is how likely the token is still needed at its age
    ``a`` (newest cached position minus its own): the head regresses log(1 + lifetime) under a squared error, a
    log-normal belief around its output, so P(lifetime > a) rises with output - log(1 + a), which is the score. A
    token whose predicted lifetime has long passed goes first; of two statements predicted alike, the older (the
    overwritten one) goes first. Recency is thus already in the score; the ``recency`` option adds r x log(1 +
    cached span) x age rank there (the median score, its scale for importance heads, is negative here). The
    ranking options act on that score, chosen per budget as for an importance head."""

    name = "dynts"
    family = "learned"
    step_cost = "the importance predictor (a small MLP) on every new token's final hidden state"
    requires = "predictor"
    needs = frozenset({"hidden"})
    state_names = (SCORE,)
    predictor: str | None = option(None, "importance predictor directory; None: the one shipped for the model")
    pool_next: int | None = option(None, (
        "a token's score is at least that of the pool_next tokens written right after it (a statement's name goes "
        "with its value); None: the predictor's stored setting at the run's budget (0: the paper's ranking)"))
    recency: float | None = option(None, (
        "adds recency x the sequence's median score (a lifetime head: log(1 + cached span)) x the token's age rank "
        "(0 oldest .. 1 newest), so tokens the head does not single out go oldest first; None: the predictor's "
        "stored setting at the run's budget (0: the paper's ranking)"))
    _model: ImportancePredictor | None = field(default=None, init=False, repr=False)
    _source: str | None = field(default=None, init=False, repr=False)
    _device: torch.device | None = field(default=None, init=False, repr=False)  # where the head's weights are

    def __post_init__(self) -> None:
        if self.predictor:
            self._model = ImportancePredictor.load(self.predictor)

    def lacks_artefact(self) -> bool:
        return self._model is None

    def provide(self, artefact: str) -> None:
        self._model = ImportancePredictor.load(artefact)
        self._source, self._device = artefact, None

    def artefact(self) -> str | None:
        return self._source or self.predictor

    def prepare(self, model: ModelInfo) -> None:
        if self._model is None:
            raise PolicyError(
                f"dynts needs an importance predictor trained for {model.model_id}: pass --predictor DIR "
                "(a directory with predictor.json and model.safetensors)"
            )
        self._model.check_model(model)
        check_selection(self._model.config.selection)  # a malformed stored selection is refused before any work

    def selection(self, budget: int | None = None) -> tuple[int, float]:
        """``(pool_next, recency)`` in force at KV budget ``budget`` (None: a run without one): each option as
        given, else the predictor's stored setting for that budget, else the paper's (0, 0)."""
        chosen = self._model.config.selection if self._model is not None else {}
        stored_pool_next, stored_recency = stored_selection(chosen, budget)
        pool_next = self.pool_next if self.pool_next is not None else stored_pool_next
        recency = self.recency if self.recency is not None else stored_recency
        if pool_next < 0 or recency < 0:
            raise PolicyError(f"dynts options pool_next and recency must be >= 0, got {pool_next} and {recency}")
        return pool_next, recency

    def predicts_lifetime(self) -> bool:
        """Whether the head is a lifetime head (``target: lifetime``): its output is ranked by ``still_needed``."""
        return self._model is not None and self._model.config.target == "lifetime"

    def ranked(self, scores: torch.Tensor, view: CacheView) -> torch.Tensor:
        """The ranking options applied to the compaction scores (a lifetime head's: ``still_needed``), each row
        with the options of its budget."""
        lifetime = self.predicts_lifetime()
        budgets = view.budgets or (None,) * view.batch_size
        by_budget = {b: self.selection(b) for b in dict.fromkeys(budgets)}  # looked up once per distinct budget
        settings = [by_budget[b] for b in budgets]
        distinct = list(dict.fromkeys(settings))
        if len(distinct) == 1:
            return apply_options(scores, view, *distinct[0], lifetime=lifetime)
        out = scores
        for setting in distinct:
            rows = torch.tensor([s == setting for s in settings], device=scores.device)
            out = torch.where(rows[:, None], apply_options(scores, view, *setting, lifetime=lifetime), out)
        return out

    def observe(self, obs: StepObservation, state: dict[str, torch.Tensor]) -> None:
        assert self._model is not None and obs.hidden is not None
        if self._device != obs.hidden.device:  # moved once, not per step: Module.to walks every parameter
            self._model.to(obs.hidden.device)
            self._device = obs.hidden.device
        obs.write(state[SCORE], self._model.score(obs.hidden).float())

    def score(self, view: CacheView) -> torch.Tensor:
        scores = view.state[SCORE]
        if self.predicts_lifetime():
            assert self._model is not None
            scores = still_needed(self._model.config.log_lifetime(scores), view.positions, view.valid)
        if view.think_end_id is not None:
            answer = (view.token_ids == view.think_end_id).cummax(-1).values  # from </think> on
            scores = scores.masked_fill(answer & view.valid, float("inf"))
        return self.ranked(scores, view)


def apply_options(scores: torch.Tensor, view: CacheView, pool_next: int, recency: float,
                  lifetime: bool = False) -> torch.Tensor:
    """``pool_next`` then ``recency`` (the options' help says what each does) applied to every row of ``scores``;
    ``lifetime``: the scores are a lifetime head's (``still_needed``), whose recency scale is log(1 + cached span)
    rather than the row's median score."""
    if pool_next:
        scores = pool_successors(scores, view.positions, view.valid, pool_next)
    if recency:
        scale = cached_span(view.positions, view.valid).log1p() if lifetime else _row_median(scores, view.valid)
        scores = scores + recency * scale[:, None] * age_rank(view.positions, view.valid)
    return scores


def stored_selection(selection: dict[str, Any], budget: int | None) -> tuple[int, float]:
    """The ``(pool_next, recency)`` a predictor's ``selection`` holds for a run at KV budget ``budget``.

    ``selection`` holds one setting (``pool_next``, ``recency``; missing ones are the paper's 0) and, when chosen
    per budget (``select-ranking --per-budget``), a table ``by_budget``: {budget: {pool_next, recency}}. A run at a
    budget uses that budget's entry if there is one, else the entry of the nearest chosen budget by ratio (see
    ``nearest_budget``); a run without a budget (paper mode) uses the single setting.
    """
    table = selection.get("by_budget")
    entry = selection
    if table and budget is not None:
        parsed = _budget_table(table)
        entry = parsed[nearest_budget(sorted(parsed), budget)]
    try:
        return int(entry.get("pool_next", 0)), float(entry.get("recency", 0.0))
    except (TypeError, ValueError):
        raise PolicyError(f"the predictor's stored selection {entry!r} is not numbers pool_next and recency: rerun "
                          "`dynts-bench select-ranking --write`") from None


def check_selection(selection: dict[str, Any]) -> None:
    """Refuse (one line) a stored selection ``stored_selection`` could not read at some budget."""
    table = selection.get("by_budget")
    for budget in (None, *(_budget_table(table) if table else ())):
        stored_selection(selection, budget)


def nearest_budget(chosen: list[int], budget: int) -> int:
    """The chosen budget whose options serve a run at ``budget``: ``budget`` itself if chosen; between two chosen
    budgets the nearer by ratio, since what a budget keeps of a trace scales with it (240 takes 400's options
    rather than 100's, though 100 is nearer in tokens), a tie (the geometric mean) to the smaller; below or above
    every chosen budget, the nearest end (an extrapolation)."""
    return min(chosen, key=lambda b: (abs(math.log(b / budget)), b))


def _budget_table(table: Any) -> dict[int, dict[str, Any]]:
    """``by_budget`` with integer budgets; a one-line refusal of anything else."""
    try:
        parsed = {int(b): dict(entry) for b, entry in table.items()}
    except (AttributeError, TypeError, ValueError):
        parsed = {}
    if not parsed or any(b < 1 for b in parsed):
        raise PolicyError(f"the predictor's selection 'by_budget' {table!r} is not a table of budgets >= 1 to "
                          "{pool_next, recency}: rerun `dynts-bench select-ranking --per-budget --write`")
    return parsed


def still_needed(log_lifetime: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each slot's predicted log(1 + lifetime) minus log(1 + its age), the age being the row's newest cached
    position minus its own: above 0 while the token is younger than its predicted lifetime."""
    _, newest = position_range(positions, valid)
    return log_lifetime - (newest - positions).clamp(min=0).float().log1p()


def cached_span(positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Newest minus oldest cached position of each row (at least 1): the oldest cached token's age."""
    oldest, newest = position_range(positions, valid)
    return (newest - oldest).squeeze(-1).clamp(min=1).float()


def position_range(positions: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 1]`` each: the oldest and the newest cached position of each row. The newest is the row's last
    column (a view in generation order, left padding only)."""
    oldest = positions.masked_fill(~valid, torch.iinfo(positions.dtype).max).amin(-1, keepdim=True)
    return oldest, positions[:, -1:]


def pool_successors(scores: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Each slot's score raised to the largest score among the slots holding the next ``k`` logical positions
    (those still cached). A view's valid slots are each row's last ones, in generation order (``CacheView``: left
    padding only), and positions grow by at least 1 a column, so those successors are among the next ``k``
    columns: the ones whose position is at most ``k`` further."""
    pooled = scores.clone()
    for shift in range(1, k + 1):
        # a valid slot's later columns are valid too (left padding only): the slot's validity is the pair's
        follows = valid[:, :-shift] & (positions[:, shift:] - positions[:, :-shift] <= k)
        later = torch.maximum(pooled[:, :-shift], scores[:, shift:])
        pooled[:, :-shift] = torch.where(follows, later, pooled[:, :-shift])
    return pooled


def age_rank(positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each slot's logical position scaled to 0 (the oldest cached token) .. 1 (the newest); 0 for empty slots."""
    oldest, newest = position_range(positions, valid)
    age = (positions - oldest).float() / (newest - oldest).clamp(min=1).float()
    return age.clamp(min=0).masked_fill(~valid, 0.0)


def _row_median(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Median of each row's finite scores (the head's own scale, so ``recency`` needs no units); 1 if none."""
    finite = valid & torch.isfinite(scores)
    return scores.masked_fill(~finite, float("nan")).nanmedian(-1).values.nan_to_num(1.0)
