"""What ``dynts-bench policies`` shows under its table: the zoo grouped by family with what each policy needs and
costs, and the kvpress presses that are not here, each with the reason.

The grouping and the costs are class attributes of the policies (``Policy.family``, ``step_cost``,
``compression_cost``, ``kvpress``), so a new policy file is listed in its group with no change here.
"""

from __future__ import annotations

from collections.abc import Mapping

from zoo.base import FAMILIES, Policy

KVPRESS_RELEASE = "0.5.4"

#: Every score-based press kvpress's latest release accepts as a ``DecodingPress`` base (``ScorerPress``
#: subclasses and the ``AdaKVPress`` wrapper) that no policy here computes, with the reason. The engines hand a
#: policy post-RoPE keys, the last queries of every layer and final hidden states, and keep one token set for
#: every layer and head (paged memory is freed per token, not per head).
KVPRESS_ABSENT: dict[str, str] = {
    "ExpectedAttentionPress": "needs pre-RoPE query statistics rotated by the model's RoPE frequencies, and "
    "value norms: the engines hand a policy post-RoPE queries and keys only",
    "LagKVPress": "scores keys and values alike (min-max lag statistics of both): the engines hand a policy no "
    "value vectors",
    "CapPress": "weights value vectors by their alignment with pre-RoPE queries: the engines hand a policy "
    "neither values nor pre-RoPE queries",
    "CriticalKVPress": "rescales its base press by |W_o v| (value vectors through the output projection): the "
    "engines hand a policy no values",
    "LeverageScorePress": "prefill only in kvpress (it asserts as many hidden states as keys, false at the "
    "first decoding compression) and needs pre-RoPE keys",
    "NonCausalAttnPress": "prefill only in kvpress (non-causal attention of every prompt query) and needs "
    "value norms",
    "CompactorPress": "prefill only in kvpress (LeverageScorePress + NonCausalAttnPress)",
    "PyramidKVPress": "a per-layer budget (a pyramid over layers): paged memory is freed per token for every "
    "layer at once; with one budget for all layers it is snapkv",
    "AdaKVPress": "per-head budgets (it masks evicted keys per head and frees nothing): averaged over heads, "
    "as here, it is its base press",
    "KVzapPress": "downloads a trained scorer from a model hub",
    "QFilterPress": "downloads per-model query filters from a model hub",
    "ExpectedAttentionStatsPress": "downloads per-model query statistics from a model hub",
}


def _needs(cls: type[Policy]) -> str:
    needs = sorted(cls.needs) + ([f"{cls.requires} (artefact)"] if cls.requires else [])
    return ", ".join(needs) or "no observation (the cache alone)"


def policy_overview(policies: Mapping[str, type[Policy]]) -> str:
    """Plain text: the policies grouped by family (in ``FAMILIES`` order, then any undeclared family), each with
    its needs, per-step and per-compression work and kvpress counterpart; then the absent kvpress presses."""
    lines: list[str] = []
    families = list(FAMILIES) + sorted({cls.family for cls in policies.values()} - set(FAMILIES))
    for family in families:
        members = [(name, cls) for name, cls in policies.items() if cls.family == family]
        if not members:
            continue
        lines.append(f"{family}:")
        for name, cls in members:
            press = f"  (kvpress {cls.kvpress})" if cls.kvpress else ""
            lines.append(f"  {name}{press}")
            lines.append(f"    needs: {_needs(cls)}")
            lines.append(f"    every step: {cls.step_cost or 'nothing'}")
            work = cls.compression_cost or "reads positions, token ids or stored scores"
            lines.append(f"    at compression: {work if cls.evicts else 'never compresses'}")
    lines.append(f"kvpress {KVPRESS_RELEASE} DecodingPress bases not here:")
    lines.extend(f"  {press}: {why}" for press, why in KVPRESS_ABSENT.items())
    return "\n".join(lines)
