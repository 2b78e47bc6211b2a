"""The policy interface: score every cached token, select which survive, evict the rest.

A policy is a small dataclass built per run from its options. It declares the observations it needs
(``needs``) so that a backend computes only those: ``hidden`` (final hidden state of every processed token),
``queries`` (the last ``query_window`` post-RoPE queries of every layer, kept by the backend so that attention
can be computed at selection time), ``attention`` (attention received by every cached token, accumulated at
every step -- expensive, only H2O needs it).

Everything generic lives here once: protection of prompt / window / sinks, top-k under a per-sequence keep
count with order preserved, and compaction through the cache. A baseline only writes ``score``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

import torch

from zoo.errors import UserError

Observation = str  # one of OBSERVATIONS
OBSERVATIONS = frozenset({"hidden", "queries", "attention"})
#: how ``dynts-bench policies`` groups the zoo: a trained scorer, attention of real queries, the cached keys
#: alone, or position / token rules that read no model state
FAMILIES = ("learned", "attention-based", "key-only", "structural")


class PolicyError(UserError, ValueError):
    """A policy option is invalid or a policy cannot run as configured; the message says how to fix it."""


def valid_to_newest(valid: torch.Tensor) -> torch.Tensor:
    """Long ``[B, T]``: how many valid slots lie from each slot (itself included) to the row's end -- for a valid
    slot of a view in generation order, its rank counted from the newest token (1: the newest)."""
    count = valid.long().cumsum(-1)
    return count[:, -1:] - count + valid.long()


@dataclass
class CacheView:
    """What a policy may read at selection time. Every ``[B, T]`` tensor, ``state`` and the keys included, is over
    the same ``T`` slots of each sequence, laid out by the backend for this call: in generation order (oldest first),
    left-padded, ``valid`` marking real tokens. Column ``t`` is not physical slot ``t``: the backend maps the kept
    columns back to its own slots (``Policy.evict``), so a policy never needs to know where a token lives.
    """

    valid: torch.Tensor  # bool [B, T]
    positions: torch.Tensor  # long [B, T] logical (RoPE) position of each slot, -1 where invalid
    token_ids: torch.Tensor  # long [B, T]
    is_prompt: torch.Tensor  # bool [B, T]
    keys: Sequence[torch.Tensor]  # per layer [B, KVH, T, D], post-RoPE
    queries: Sequence[torch.Tensor] | None = None  # per layer [B, H, w, D], oldest first
    query_valid: torch.Tensor | None = None  # bool [B, w]: rows whose prompt was shorter than w
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # per-slot policy state, [B, T] each
    think_end_id: int | None = None  # token id of ``</think>`` when the tokenizer has one
    #: each row's KV budget (its schedule's ``--budget``), for a policy whose ranking depends on it (DynTS's
    #: per-budget options); None when the schedule has no budget (paper mode) or the view is not a compression's
    budgets: tuple[int, ...] | None = None

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def recent_window(self, window: int) -> torch.Tensor:
        """Bool [B, T]: the last ``window`` valid slots of every row -- its last ``window`` columns, since the
        valid slots are each row's last ones (left padding only)."""
        if window <= 0:
            return torch.zeros_like(self.valid)
        return self.valid & (torch.arange(self.length, device=self.valid.device) >= self.length - window)

    def first_tokens(self, count: int) -> torch.Tensor:
        """Bool [B, T]: the first ``count`` tokens of every sequence (attention sinks), by logical position."""
        return self.valid & (self.positions < count)


@dataclass(frozen=True)
class ModelInfo:
    """Facts about the served model that a policy may need to bind to it."""

    model_id: str  # what the user passed as --model (alias, path or hub id)
    name_or_path: str  # the model's own config ``_name_or_path``
    hidden_size: int
    num_layers: int
    token_texts: Callable[[], list[str]]  # decoded text of every vocabulary id (computed on demand)
    think_end_id: int | None = None  # token id of ``</think>`` when the tokenizer has one as a single token
    kv_bytes_per_token: int = 0  # 2 x layers x kv_heads x head_dim x itemsize: one token's keys and values
    eos_ids: frozenset[int] = frozenset()
    vocab_size: int = 0


@dataclass
class StepObservation:
    """What the backend saw in one forward pass, handed to ``Policy.observe``.

    At observe time the ``state`` tensors are indexed by the backend's physical slots, and a policy may assume only
    this of them: the ``q`` new tokens of each row are in the slots ``write`` stores at (which hold zeros in the
    policy's own state tensors until ``observe`` writes them), and a slot's state stays with its token when the
    backend moves or drops tokens. Nothing else: physical order is not generation order (the transformers cache
    writes a row's new token into a slot its evictions freed, a paged engine compacts to the front), slot 0 is not
    the start of a sequence, and physically adjacent slots need not hold adjacent tokens. A policy that needs the
    previous token or a token's neighbour keeps what it needs in its own state (the tiny-reasoner oracle keeps
    a generation counter per slot).
    """

    token_ids: torch.Tensor  # long [B, q]
    #: every row's q tokens went to physical slots [slot_start, slot_start + q); -1 when ``slots`` says where
    slot_start: int
    hidden: torch.Tensor | None = None  # [B, q, hidden] final (post-norm) hidden states, if needed
    is_prefill: bool = False
    slots: torch.Tensor | None = None  # long [B, q]: each row's own slots, when rows wrote to different ones

    def write(self, target: torch.Tensor, values: torch.Tensor, first: int = 0) -> None:
        """Store ``values`` ``[B, n]`` for new tokens ``first .. first + n - 1`` of every row in the state tensor
        ``target`` ``[B, slots]``, at those tokens' slots."""
        n = values.shape[1]
        if self.slots is None:
            target[:, self.slot_start + first : self.slot_start + first + n] = values
        else:
            target.scatter_(1, self.slots[:, first : first + n], values)


class CompactableCache(Protocol):
    """What ``Policy.evict`` needs from a backend's cache."""

    def compact(self, kept: torch.Tensor, kept_valid: torch.Tensor) -> None: ...


@dataclass
class Policy:
    """Base class of every policy. Subclasses set ``name``, ``needs`` and implement ``score``."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[Observation]] = frozenset()
    #: per-slot state tensors the backend allocates and compacts along with the cache
    state_names: ClassVar[tuple[str, ...]] = ()
    #: a policy that never evicts (``full``) runs without a schedule and with an unbounded cache
    evicts: ClassVar[bool] = True
    #: a model-specific artefact the policy cannot run without (``"predictor"``), or None: runs on any model.
    #: The harness's catalog says which shipped model provides which artefact.
    requires: ClassVar[str | None] = None
    #: part of ``dynts-bench run``'s default comparison (where its artefact, if any, is available)
    in_default_comparison: ClassVar[bool] = True
    #: one of ``FAMILIES``
    family: ClassVar[str] = "structural"
    #: work added to every decoding step beyond the model's forward ("" when none)
    step_cost: ClassVar[str] = ""
    #: work of one compression to score the cache ("" when only positions or stored state are read)
    compression_cost: ClassVar[str] = ""
    #: the kvpress press this policy computes (``kvpress.presses``), when there is one
    kvpress: ClassVar[str | None] = None

    @property
    def query_window(self) -> int:
        """How many recent queries per layer the backend must keep (if ``queries`` is needed)."""
        return 0

    def reserved_tokens(self) -> int:
        """Tokens always kept besides prompt and window (sinks); used to validate budgets up front."""
        return 0

    def prepare(self, model: ModelInfo) -> None:
        """Bind to the model before generation; refuse one this policy cannot serve (default: nothing)."""

    def lacks_artefact(self) -> bool:
        """Whether the ``requires`` artefact was not given in the options (the harness may then ``provide`` the
        one it ships for the model)."""
        return False

    def artefact(self) -> str | None:
        """Where the policy's model artefact was loaded from (fingerprinted into the run config), if any."""
        return None

    def provide(self, artefact: str) -> None:
        """Take the ``requires`` artefact shipped for the model. Options stay as given: ``None`` then records
        "the model's shipped artefact", whose content the run config hashes separately."""
        raise PolicyError(f"policy {self.name} takes no model artefact")

    def observe(self, obs: StepObservation, state: dict[str, torch.Tensor]) -> None:
        """Update per-slot state after a forward pass (default: nothing)."""

    def score(self, view: CacheView) -> torch.Tensor:
        """Importance of each cached token, float [B, T]: higher is kept first."""
        raise NotImplementedError

    def protected(self, view: CacheView) -> torch.Tensor | None:
        """Bool [B, T]: slots this policy always keeps beyond prompt and window; None (the default): none."""
        return None

    def must_keep(self, view: CacheView, window: int, protect_prompt: bool) -> torch.Tensor:
        """Bool [B, T]: the slots ``select`` keeps whatever their score: the recent window, the policy's
        ``protected`` slots and, with ``protect_prompt``, the prompt."""
        must = view.recent_window(window)
        protected = self.protected(view)
        if protected is not None:
            must = must | protected
        return must | view.is_prompt if protect_prompt else must

    def select(
        self,
        scores: torch.Tensor,
        view: CacheView,
        keep: torch.Tensor,
        window: int,
        protect_prompt: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick ``keep[b]`` slots per row: protected slots first, then the top scores; order preserved.

        Returns ``(kept, kept_valid)``, both ``[B, K]`` with ``K = max(keep)``, left-padded like the cache.
        """
        must = self.must_keep(view, window, protect_prompt)
        ranked = scores.float().masked_fill(must, float("inf")).masked_fill(~view.valid, float("-inf"))
        k = int(keep.max().item())
        top = ranked.topk(k, dim=-1).indices
        unchosen = torch.arange(k, device=top.device).unsqueeze(0) >= keep.unsqueeze(1)
        # Unchosen entries become -1 so that sorting puts them first: the kept set is left-padded.
        ordered = top.masked_fill(unchosen, -1).sort(dim=-1).values
        return ordered.clamp(min=0), ordered >= 0

    def evict(self, cache: CompactableCache, kept: torch.Tensor, kept_valid: torch.Tensor) -> None:
        """Compact the cache to the kept slots (default: gather them in every layer)."""
        cache.compact(kept, kept_valid)

    # ------------------------------------------------------------------ option checks
    def _at_least(self, option: str, minimum: float) -> None:
        value = getattr(self, option)
        if value < minimum:
            raise PolicyError(f"{self.name} {option} must be >= {minimum}, got {value}")

    def _within(self, option: str, low: float, high: float) -> None:
        value = getattr(self, option)
        if not low <= value <= high:
            raise PolicyError(f"{self.name} {option} must be in [{low}, {high}], got {value}")

    def _odd(self, option: str) -> None:
        value = getattr(self, option)
        if value < 1 or value % 2 == 0:
            raise PolicyError(f"{self.name} {option} must be an odd number >= 1, got {value}")

    def _one_of(self, option: str, choices: Sequence[str]) -> None:
        value = getattr(self, option)
        if value not in choices:
            raise PolicyError(f"{self.name} {option} must be {' or '.join(map(repr, choices))}, got {value!r}")

    # ------------------------------------------------------------------ config
    def options(self) -> dict[str, Any]:
        """The policy's options, as recorded in a run's config."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def option(default: Any, help: str) -> Any:
    """A policy option: its default and what it means, which ``dynts-bench policies`` and ``run --help`` show
    (``zoo.option_help``)."""
    return field(default=default, metadata={"help": help})


@dataclass
class SinkPolicy(Policy):
    """A policy that always keeps the first ``sinks`` tokens (attention sinks, StreamingLLM and SepLLM)."""

    sinks: int = option(4, "first tokens always kept (attention sinks)")

    def __post_init__(self) -> None:
        self._at_least("sinks", 0)

    def reserved_tokens(self) -> int:
        return self.sinks

    def protected(self, view: CacheView) -> torch.Tensor:
        return view.first_tokens(self.sinks)


@dataclass
class QueryWindowPolicy(Policy):
    """A policy that scores by the attention of the last ``obs_window`` queries, pooled over ``kernel_size``
    neighbouring slots (SnapKV, R-KV): the backend keeps that many recent queries per layer."""

    obs_window: int = 32
    kernel_size: int = 7

    def __post_init__(self) -> None:
        self._at_least("obs_window", 1)
        self._odd("kernel_size")

    @property
    def query_window(self) -> int:
        return self.obs_window


def query_attention(view: CacheView) -> Iterator[torch.Tensor]:
    """Per layer, attention probabilities ``[B, H, w, T]`` of the stored recent queries over the cached keys.

    Query ``i`` of ``w`` (oldest first) belongs to the token in the ``(w - i)``-th last slot, so it sees only
    slots up to its own (causal) and never invalid ones. Computed at selection time, as R-KV and SnapKV do, so
    decoding keeps fused attention kernels. One layer at a time bounds the memory to one ``[B, H, w, T]``.
    """
    if view.queries is None:
        raise PolicyError("this policy needs stored queries, but the backend provided none")
    t = view.length
    for q, k in zip(view.queries, view.keys):
        q = q.float()  # [B, H, w, D]
        b, h, w, d = q.shape
        kv_heads = k.shape[1]
        # grouped-query attention without copying keys per query head: query head j reads KV head
        # j // (H / KVH), so the queries of one KV head's group are rows of one matmul (the same products)
        grouped = q.reshape(b, kv_heads, (h // kv_heads) * w, d) @ k.float().transpose(-1, -2)
        logits = grouped.view(b, h, w, -1) / d**0.5  # [B, H, w, T]
        limit = t - (w - 1 - torch.arange(w, device=q.device))  # query i sees slots < limit[i]
        visible = torch.arange(t, device=q.device).unsqueeze(0) < limit.unsqueeze(1)  # [w, T]
        mask = visible.unsqueeze(0) & view.valid.unsqueeze(1)  # [B, w, T]
        if view.query_valid is not None:
            mask = mask & view.query_valid[:, -w:].unsqueeze(-1)
        logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
        yield torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows without a valid query give zeros


def stacked_layers(layers: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """``[L, ...]``: every layer's tensor in one, when the sequence already holds them that way (the transformers
    backend's keys and queries, ``stacked()``); None for per-layer sequences (the paged engines read each layer's
    keys on demand, so stacking them would hold every layer's keys at once)."""
    stacked = getattr(layers, "stacked", None)
    return stacked() if callable(stacked) else None


#: ``fn(keys, valid, rows)``: the keys ``[L, R, KVH, T, D]`` of ``R`` of the view's sequences, their validity
#: ``[R, T]`` and which rows of the view they are -> ``[L, R, X, T]``: each slot's values from its own key, and at
#: most from sums over the sequence's valid keys (``over_keys`` may hand the slots in another order)
KeyMap = Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]


def over_keys(view: CacheView, fn: KeyMap, together: bool = False) -> torch.Tensor:
    """``[L, B, X, T]``: ``fn`` over every layer's keys of every sequence, in generation order.

    The transformers backend runs ``fn`` where the keys lie, in its own slot order, and reorders only the result
    (``OrderedKeys.over_keys``): no key is copied, but ``fn`` runs once per run of neighbouring sequences in the
    batch; ``together`` asks for one call in all (the keys of sequences that are not neighbours are stacked),
    which pays for a ``fn`` of many small operations. Otherwise ``fn`` runs once per layer on the view's keys (the
    paged engines read a layer's keys on demand; stacking them would hold every layer's at once). Values from
    one key are the same to the bit either way; sums over a sequence's keys may differ in the last bits, since
    they add in another order."""
    mapped = getattr(view.keys, "over_keys", None)
    if callable(mapped):
        return mapped(fn, view.valid, together)
    rows = list(range(view.batch_size))
    return torch.cat([fn(keys.unsqueeze(0), view.valid, rows) for keys in view.keys])


def last_query_attention(view: CacheView) -> torch.Tensor:
    """``[B, T]``: the newest stored query's attention over the cached keys, averaged over heads and layers.

    The same numbers as the last row of ``query_attention`` (which sees every slot: it is the newest query).
    Where the keys offer ``over_keys`` (the transformers backend) the dot products are taken where the keys lie,
    for all layers at once, and only the logits are put in generation order, before the softmax."""
    queries = None if view.queries is None else stacked_layers(view.queries)
    if not callable(getattr(view.keys, "over_keys", None)) or queries is None:
        return torch.stack([probs[:, :, -1].mean(dim=1) for probs in query_attention(view)]).mean(0)
    q = queries[:, :, :, -1].float()  # [L, B, H, D]
    layers, _, h, d = q.shape

    def dot_products(keys: torch.Tensor, valid: torch.Tensor, rows: list[int]) -> torch.Tensor:  # -> [L, R, H, T]
        # as in query_attention: query head j reads KV head j // (H / KVH), one matmul per KV head's group; one
        # layer at a time, whose keys are contiguous (a matmul would copy the strided stack of layers)
        kv_heads = keys.shape[2]
        grouped = q[:, rows].reshape(layers, len(rows), kv_heads, h // kv_heads, d)
        return torch.stack([g @ k.float().transpose(-1, -2) for g, k in zip(grouped, keys)]).flatten(2, 3)

    logits = over_keys(view, dot_products) / d**0.5  # [L, B, H, T]
    mask = view.valid if view.query_valid is None else view.valid & view.query_valid[:, -1:]
    logits = logits.masked_fill(~mask[None, :, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return probs.mean(dim=2).mean(0)
