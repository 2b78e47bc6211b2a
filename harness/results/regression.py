"""The regression gate: compare finished runs with a committed baseline, and never let a check vanish.

Entries are keyed by (workload, model, policy, budget) and pool their seeds. Every baseline entry is checked or
fails as missing; every current entry must be in the baseline or fails as new; an entry whose run config
differs from the baseline's (sample count, limit, sampling, model, data hash, ...) fails with the difference
named -- comparing different experiments is never a pass.

* **Accuracy, greedy runs** (deterministic): per-sample correctness against the baseline's; every flipped
  sample is listed and any flip fails. Outputs that changed without a flip are reported (not failed).
* **Accuracy, sampled runs**: a one-sided Fisher exact test at ``alpha``, with the test's power against a
  5-point drop reported; an entry too small to have 80% power fails as underpowered, naming the trials needed.
* **KV memory**: the bytes the cache actually allocated (tensor storage, largest batch), absolute, against the
  baseline's with ``kv_tolerance`` -- the full cache's entry included, so a cache that stops shrinking, or a
  full cache that grows, fails.
* **Reasoning length**: a policy's ``length vs full`` (mean generated tokens over the full cache's on the same
  problems, ``harness.results.lengths``) against the baseline's, and the full cache's own mean length against the
  baseline's: fail above ``length_tolerance`` (greedy: the figure itself, which a rerun reproduces; sampled: when
  even its 95% interval's low end is above, inconclusive when only the figure is). A baseline made before lengths
  were recorded decides it from its output hashes: identical outputs have identical lengths (ok), changed ones
  make the check inconclusive until the baseline is remade.
* **Speed** (from the sweep's speed probe, ``harness.timing.speed_probe``: interleaved repeats, min / median / max): the
  decode time per token divided by a fixed reference computation timed beside it (catches a decode loop that
  got slower for every policy, ``full`` included), and the decode time relative to ``full`` in the same round
  (a policy's own cost). Load on a shared machine only ever adds time, so the fastest repeat is the figure closest
  to the code's own cost: a check **fails** when even the fastest repeat is more than ``speed_tolerance`` above
  the baseline's median (every repeat slower), passes when the median is within it, and is **inconclusive** --
  reported, not failed -- when the median is above the limit but the fastest repeat is not (a burst of load and
  a real slowdown look alike there). The earlier rule (fail on the median when the repeats spread less than the
  tolerance) failed CI once on an unchanged policy: oracle vs full, repeats 1.03 / 1.25 / 1.31 against a baseline
  median of 0.97 whose own repeats spread 0.87-1.27. The thread count, clock, reference and probe workload must
  match the baseline's.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.results.leaderboard import RunRecord
from harness.results.lengths import length_ratio
from harness.results.rundir import ResultsError
from harness.results.tables import human_bytes

BASELINE_VERSION = 3
#: the drop in accuracy a sampled gate must be able to see, and with what power
DETECTABLE_DROP, MIN_POWER = 0.05, 0.8
#: what must match the baseline's run; ``artefacts`` holds the content hashes of the model and the predictor, so
#: retrained weights are named as the difference instead of surfacing as flipped samples (or not at all)
COMPARED_CONFIG = ("backend", "model", "dtype", "device", "batch_size", "limit", "chat", "prompts_name",
                   "prompts_sha256", "sampling", "policy_options", "schedule", "extra", "artefacts")


#: the rise of ``length vs full`` the gate allows: above greedy decoding's zero noise, below a 20% lengthening
LENGTH_TOLERANCE = 0.10


def validate_gate(alpha: float, kv_tolerance: float, speed_tolerance: float,
                  length_tolerance: float = LENGTH_TOLERANCE) -> None:
    """Refuse settings that switch a check off (``--alpha 0``) or make it meaningless."""
    if not 0.0 < alpha < 0.5:
        raise ResultsError(f"--alpha must be in (0, 0.5), got {alpha}: 0 switches the accuracy test off")
    if not 0.0 <= kv_tolerance < 1.0:
        raise ResultsError(f"--kv-tolerance must be in [0, 1), got {kv_tolerance}")
    if not 0.0 < speed_tolerance < 1.0:
        raise ResultsError(f"--speed-tolerance must be in (0, 1), got {speed_tolerance}: 1 switches the speed "
                           "check off")
    if not 0.0 <= length_tolerance < 1.0:
        raise ResultsError(f"--length-tolerance must be in [0, 1), got {length_tolerance}")


def _output_hash(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def _samples(r: RunRecord, seed: int) -> dict[str, dict[str, Any]]:
    """Per-sample correctness and output hash of a run (seed-qualified, so pooled seeds stay apart)."""
    out = {}
    path = r.path / "samples.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        if "correct" in row:
            out[f"seed {seed}:{row['sample_id']}"] = {"correct": bool(row["correct"]),
                                                          "output": _output_hash(row.get("output_ids", [])),
                                                          "tokens": row.get("generated_tokens")}
    return out


def _config(r: RunRecord) -> dict[str, Any]:
    config = json.loads((r.path / "config.json").read_text())["config"]
    return {k: config.get(k) for k in COMPARED_CONFIG}


def _pool(records: list[RunRecord]) -> dict[str, dict[str, Any]]:
    pooled: dict[str, dict[str, Any]] = {}
    for r in records:
        config = _config(r)
        entry = pooled.setdefault(r.gate_key, {"successes": 0, "trials": 0, "kv_allocated": [],
                                            "runs": [], "configs": [], "samples": {}})
        entry["greedy"] = config["sampling"].get("temperature", 0.0) == 0.0
        if r.quality is not None and r.n_samples:
            entry["successes"] += round(r.quality * r.n_samples)
            entry["trials"] += r.n_samples
        if r.kv_allocated_bytes:
            entry["kv_allocated"].append(r.kv_allocated_bytes)
        entry["runs"].append({"run_id": r.run_id, "config_hash": r.config_hash, "seed": config["sampling"]["seed"]})
        entry["configs"].append({k: v for k, v in config.items()})
        entry["samples"].update(_samples(r, config["sampling"]["seed"]))
    for entry in pooled.values():
        entry["kv_allocated_bytes"] = max(entry["kv_allocated"]) if entry["kv_allocated"] else None
        entry["configs"] = sorted(entry["configs"], key=lambda c: c["sampling"]["seed"])
        del entry["kv_allocated"]
    return pooled


#: what a speed figure was measured with: a different value makes the figures incomparable
SPEED_SETUP = ("clock", "reference", "spec", "threads")


def load_speed(root: Path) -> dict[str, dict[str, Any]]:
    """The speed probe's entries (``speed.json``) below ``root``, each carrying the setup it was measured with."""
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("speed.json")):
        try:
            probe = json.loads(path.read_text())
            found = {key: {**{k: probe[k] for k in SPEED_SETUP[:3]}, **e} for key, e in probe["entries"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ResultsError(f"{path} is unreadable or truncated: rerun the sweep (it reruns the probe)") from None
        twice = sorted(set(found) & set(entries))
        if twice:
            raise ResultsError(f"{path} times {twice[0]!r} again: check one sweep's speed probe at a time")
        entries.update(found)
    return entries


def _speed_record(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in (*SPEED_SETUP, "vs_reference", "vs_full", "ms_per_token") if k in entry}


def make_baseline(records: list[RunRecord], name: str, hardware: dict[str, Any] | None = None,
                  speed: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    entries = _pool(records)
    for key, probed in (speed or {}).items():
        if key in entries:
            entries[key]["speed"] = _speed_record(probed)
    return {
        "version": BASELINE_VERSION,
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware or {},
        "entries": entries,
    }


@dataclass
class Finding:
    key: str
    metric: str
    baseline: str
    current: str
    detail: str
    failed: bool
    inconclusive: bool = False


def _config_difference(base: list[dict[str, Any]], now: list[dict[str, Any]]) -> str | None:
    if len(base) != len(now):
        return f"{len(now)} seed(s) run, the baseline has {len(base)}"
    for b, n in zip(base, now):
        for field in COMPARED_CONFIG:
            if b.get(field) != n.get(field):
                if isinstance(b.get(field), dict) and isinstance(n.get(field), dict):
                    keys = sorted(k for k in set(b[field]) | set(n[field]) if b[field].get(k) != n[field].get(k))
                    return "; ".join(f"{field}.{k}: {b[field].get(k)!r} -> {n[field].get(k)!r}" for k in keys)
                return f"{field}: {b.get(field)!r} -> {n.get(field)!r}"
    return None


def power_one_sided(p0: float, n0: int, n1: int, drop: float = DETECTABLE_DROP, alpha: float = 0.05) -> float:
    """Power of a one-sided two-proportion test (normal approximation) to see ``p0 -> p0 - drop``."""
    from scipy.stats import norm

    p1 = max(0.0, p0 - drop)
    pooled = (p0 * n0 + p1 * n1) / (n0 + n1)
    se0 = math.sqrt(max(pooled * (1 - pooled) * (1 / n0 + 1 / n1), 1e-12))
    se1 = math.sqrt(max(p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1, 1e-12))
    return float(norm.cdf((drop - norm.ppf(1 - alpha) * se0) / se1))


def trials_for_power(p0: float, alpha: float) -> int:
    n = 16
    while power_one_sided(p0, n, n, alpha=alpha) < MIN_POWER and n < 10**6:
        n = int(n * 1.25) + 1
    return n


def _accuracy(key: str, base: dict[str, Any], now: dict[str, Any], alpha: float) -> list[Finding]:
    ratio = f"{base['successes']}/{base['trials']}", f"{now['successes']}/{now['trials']}"
    if not now["trials"]:
        return [Finding(key, "accuracy", ratio[0], "none", "the current run scored no sample", True)]
    if base["greedy"] and now["greedy"] and base.get("samples"):
        flips = [sid + (" right->wrong" if was["correct"] else " wrong->right")
                 for sid, was in sorted(base["samples"].items())
                 if sid in now["samples"] and now["samples"][sid]["correct"] != was["correct"]]
        lost = sorted(set(base["samples"]) - set(now["samples"]))
        changed = sum(1 for sid, was in base["samples"].items()
                      if sid in now["samples"] and now["samples"][sid]["output"] != was["output"])
        findings = [Finding(key, "accuracy (greedy, per sample)", *ratio,
                            f"{len(flips)} flipped: {', '.join(flips[:8])}{' ...' if len(flips) > 8 else ''}"
                            if flips else "no sample flipped", bool(flips))]
        if lost:
            findings.append(Finding(key, "samples", str(len(base["samples"])), str(len(now["samples"])),
                                    f"{len(lost)} baseline samples missing, e.g. {lost[0]}", True))
        if changed:
            findings.append(Finding(key, "outputs (greedy)", "", f"{changed} changed",
                                    "outputs differ without a correctness flip (reported, not failed)", False))
        return findings
    from scipy.stats import fisher_exact

    table = [[now["successes"], now["trials"] - now["successes"]],
             [base["successes"], base["trials"] - base["successes"]]]
    p = fisher_exact(table, alternative="less").pvalue
    p0 = base["successes"] / base["trials"]
    power = power_one_sided(p0, base["trials"], now["trials"], alpha=alpha)
    findings = [Finding(key, "accuracy (sampled)", *ratio,
                        f"one-sided Fisher p={p:.3g} (fail below {alpha}); power {power:.0%} vs a "
                        f"{DETECTABLE_DROP:.0%} drop", bool(p < alpha))]
    if power < MIN_POWER:
        need = trials_for_power(p0, alpha)
        findings.append(Finding(key, "accuracy power", "", f"{power:.0%}",
                                f"underpowered: {need} trials per side give {MIN_POWER:.0%} power against a "
                                f"{DETECTABLE_DROP:.0%} drop (add samples or seeds)", True))
    return findings


def cpu_difference(made_on: dict[str, Any], here: dict[str, Any]) -> str | None:
    """Why speed figures of a baseline made on ``made_on`` do not transfer to ``here`` (another CPU model or
    instruction set: the decode and the reference computation need not scale alike), or None."""
    for key, label in (("cpu_model", "CPU"), ("cpu_isa", "instruction set")):
        a, b = made_on.get(key), here.get(key)
        if a is not None and b is not None and a != b:
            return (f"baseline timed on another {label} ({_listed(a)}; here {_listed(b)}): speed figures do not "
                    "transfer across CPUs, re-baseline on this one (check --update)")
    return None


def _listed(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def compare(
    baseline: dict[str, Any],
    records: list[RunRecord],
    alpha: float = 0.05,
    kv_tolerance: float = 0.02,
    speed_tolerance: float = 0.25,
    speed: dict[str, dict[str, Any]] | None = None,
    machine: dict[str, Any] | None = None,
    length_tolerance: float = LENGTH_TOLERANCE,
) -> list[Finding]:
    """Every check of every baseline entry against the current runs, and every current entry against it.
    ``machine``: this machine's ``runs.environment.hardware()``; speed checks on another CPU than the baseline's are
    inconclusive."""
    validate_gate(alpha, kv_tolerance, speed_tolerance, length_tolerance)
    if baseline.get("version") != BASELINE_VERSION:
        raise ResultsError(f"baseline version {baseline.get('version')} is not {BASELINE_VERSION}: recreate it with "
                           "`dynts-bench check RESULTS --baseline FILE --update`")
    current = _pool(records)
    other_cpu = cpu_difference(baseline.get("hardware") or {}, machine) if machine is not None else None
    findings = []
    for key in sorted(set(current) - set(baseline["entries"])):
        findings.append(Finding(key, "entry", "absent", "present", "not in the baseline (new policy or budget?): "
                                "update the baseline", True))
    for key, base in sorted(baseline["entries"].items()):
        now = current.get(key)
        if now is None:
            findings.append(Finding(key, "entry", "present", "missing", "no matching finished run", True))
            continue
        difference = _config_difference(base["configs"], now["configs"])
        if difference:
            findings.append(Finding(key, "config", "", "differs", difference, True))
            continue
        if base["trials"]:
            findings += _accuracy(key, base, now, alpha)
        findings += _length(key, base, now, baseline["entries"], current, length_tolerance)
        if base["kv_allocated_bytes"] is not None:
            got = now["kv_allocated_bytes"]
            limit = base["kv_allocated_bytes"] * (1 + kv_tolerance)
            findings.append(Finding(key, "KV allocated", _bytes(base["kv_allocated_bytes"]), _bytes(got),
                                    f"largest batch's cache storage; fail above {_bytes(limit)}",
                                    got is None or got > limit))
        if base.get("speed"):
            findings += _speed(key, base["speed"], (speed or {}).get(key), speed_tolerance, other_cpu)
        elif (speed or {}).get(key):
            findings.append(Finding(key, "speed", "absent", "probed", "the baseline has no speed figures for this "
                                    "entry: update the baseline", True))
    return findings


def _full_key(key: str) -> str:
    workload, model, _policy, _budget = key.split(" | ", 3)
    return f"{workload} | {model} | full | full cache"


def _tokens(entry: dict[str, Any] | None) -> dict[str, int]:
    samples = (entry or {}).get("samples") or {}
    return {sid: s["tokens"] for sid, s in samples.items() if s.get("tokens") is not None}


def _same_outputs(base: dict[str, Any] | None, now: dict[str, Any] | None) -> bool:
    a, b = (base or {}).get("samples") or {}, (now or {}).get("samples") or {}
    return bool(a) and all(sid in b and b[sid]["output"] == s["output"] for sid, s in a.items())


def _length(key: str, base: dict[str, Any], now: dict[str, Any], base_entries: dict[str, Any],
            current: dict[str, Any], tolerance: float) -> list[Finding]:
    """The reasoning-length check of one entry: ``length vs full`` for a policy, the mean length for full."""
    full_key = _full_key(key)
    is_full = key == full_key
    base_full, now_full = (base, now) if is_full else (base_entries.get(full_key), current.get(full_key))
    metric = "mean generated tokens" if is_full else "length vs full"
    if not base.get("samples"):
        return []  # nothing per sample to compare (the accuracy check says why)
    if not _tokens(base) or (not is_full and not _tokens(base_full)):
        if _same_outputs(base, now) and (is_full or _same_outputs(base_full, now_full)):
            return [Finding(key, metric, "not recorded", "same outputs", "the baseline predates recorded lengths; "
                            "every output is identical to its, so every length is", False)]
        return [Finding(key, metric, "not recorded", "-", "the baseline predates recorded lengths and outputs "
                        "changed: remake it (check --update) to decide this", False, inconclusive=True)]
    if is_full:
        was, got = length_ratio(_tokens(base), _tokens(base)), length_ratio(_tokens(now), _tokens(base))
    else:
        was, got = length_ratio(_tokens(base), _tokens(base_full)), length_ratio(_tokens(now), _tokens(now_full))
    if was is None or got is None:
        return [Finding(key, metric, "-" if was is None else was.label(), "-" if got is None else got.label(),
                        "no problems shared with the full cache's run", True)]
    limit = was.ratio * (1 + tolerance)
    shown = (f"{was.ratio:.2f}x", got.label()) if not is_full else ("1.00x", f"{got.ratio:.2f}x of baseline")
    greedy = base.get("greedy") and now.get("greedy")
    if got.ratio <= limit:
        return [Finding(key, metric, *shown, f"within {limit:.2f}x (+{tolerance:.0%})", False)]
    if greedy or got.low is None or got.low > limit:
        return [Finding(key, metric, *shown, f"traces longer: above {limit:.2f}x (+{tolerance:.0%})", True)]
    return [Finding(key, metric, *shown, f"above {limit:.2f}x (+{tolerance:.0%}) but its interval reaches below: "
                    "add samples or seeds", False, inconclusive=True)]


def speed_verdict(base_median: float, now: dict[str, float], tolerance: float) -> tuple[str, str]:
    """``ok`` / ``FAIL`` / ``inconclusive`` for a time figure (higher is slower) against the baseline's median.

    FAIL when even the fastest repeat is above the limit (every repeat slower: load adds time, it never removes
    it, so that is a slowdown however noisy the rest), ok when the median is within it, inconclusive when the
    median is above the limit but the fastest repeat is within it."""
    limit = base_median * (1 + tolerance)
    width = (now["max"] - now["min"]) / now["median"]
    if now["min"] > limit:
        return "FAIL", f"every repeat above {limit:.3f} (baseline median +{tolerance:.0%})"
    if now["median"] <= limit:
        return "ok", f"median within {limit:.3f} (+{tolerance:.0%}); spread {width:.0%}"
    return "inconclusive", (f"median above {limit:.3f} (+{tolerance:.0%}) but the fastest repeat within it; spread "
                            f"{width:.0%}: load or a slowdown smaller than the noise (rerun on a quieter machine)")


def _speed(key: str, base: dict[str, Any], now: dict[str, Any] | None, tolerance: float,
           other_cpu: str | None = None) -> list[Finding]:
    if now is None:
        return [Finding(key, "speed", "probed", "missing", "no speed probe timed this entry: rerun the sweep "
                        "(its grid's speed: section runs the probe)", True)]
    for field in SPEED_SETUP:
        if base.get(field) != now.get(field):
            return [Finding(key, "speed setup", "", "differs", f"{field}: {base.get(field)!r} -> {now.get(field)!r}"
                            " (speed figures are comparable only under the same setup)", True)]
    findings = []
    for figure, label in (("vs_reference", "decode time vs reference"), ("vs_full", "decode time vs full")):
        if figure not in base or (figure == "vs_full" and now.get("policy", key.split(" | ")[2]) == "full"):
            continue
        got = now.get(figure)
        if got is None:
            findings.append(Finding(key, label, f"{base[figure]['median']:.3f}", "-", "not measured", True))
            continue
        verdict, rule = speed_verdict(base[figure]["median"], got, tolerance)
        if other_cpu is not None:
            verdict, rule = "inconclusive", other_cpu
        findings.append(Finding(key, f"{label} ({now['threads']} thr)", f"{base[figure]['median']:.3f}",
                                f"{got['min']:.3f} / {got['median']:.3f} / {got['max']:.3f}", rule,
                                verdict == "FAIL", verdict == "inconclusive"))
    return findings


def _bytes(n: float | None) -> str:
    return human_bytes(n)
