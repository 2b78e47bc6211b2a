"""The speed probe: how fast the decode loop runs each cell of a sweep, measured so that a gate can trust it.

A grid's ``speed:`` section (``limit`` prompts, ``max_new_tokens``, ``rounds``) asks the sweep to time every
cell's policy on that short fixed workload (one batch, greedy), after one short warm-up decode per cell:

* **Interleaved repeats.** Round ``r`` visits the cells in an order rotated by ``r`` (full, window, dynts;
  window, dynts, full; ...), so a burst of load hits different cells in different rounds, not one cell's every
  repeat. Each figure is reported as min / median / max over the rounds.
* **A fixed reference**, timed right before every decode with the same thread count: a decode-step-shaped
  torch computation of fixed size and seed (``reference_seconds``). ``vs_reference`` = decode ms per generated
  token / reference ms: a slower decode loop raises it for every policy, ``full`` included, which a ratio to
  ``full`` can never show. ``vs_full`` = the cell's decode time per token / ``full``'s in the same round: a
  policy's own cost.
* **CPU time, not wall time**, on the CPU transformers backend (``clock: cpu``, ``time.process_time``): on a
  shared 2-core machine at load 4 the wall / CPU time of one decode ranged 1.0-8.4x within a minute, i.e. wall
  time measured the neighbours. Where the work is not this process's CPU time (a GPU, an engine in another
  process) the clock is ``wall``. Wall times are recorded either way, and ``cpu_share`` (CPU / wall) says how
  much of a core the probe got.

``results.regression`` judges the figures against a baseline and says "inconclusive" when the repeats disagree too much.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from backends import build_backend
from backends.base import GenerationRequest
from harness.runs.runplan import prepare
from harness.workloads.prompt_file import DataError
from harness.workloads.prompts import PromptWorkload
from harness.workloads.selection import prompts_path

if TYPE_CHECKING:
    import torch

PROBE_VERSION = 1
#: the reference computation: fixed shapes (independent of the model), best of REF_BURSTS bursts
REF_BATCH, REF_HIDDEN, REF_CONTEXT, REF_HEADS, REF_LAYERS, REF_STEPS, REF_BURSTS = 8, 128, 256, 4, 4, 24, 3
REFERENCE = f"decode-step-v1 b{REF_BATCH} h{REF_HIDDEN} ctx{REF_CONTEXT} x{REF_LAYERS} layers x{REF_STEPS} steps"


@dataclass(frozen=True)
class ProbeSpec:
    """The probe's fixed workload: the first ``limit`` prompts of the cells' prompt file, ``max_new_tokens``
    each, ``rounds`` interleaved repeats (at least 3, so that min, median and max are three numbers)."""

    limit: int = 8
    max_new_tokens: int = 128
    rounds: int = 5

    @classmethod
    def from_mapping(cls, raw: Any, where: str) -> ProbeSpec:
        if not isinstance(raw, dict):
            raise DataError(f"{where}: 'speed:' must be a mapping like {{limit: 8, max_new_tokens: 128, rounds: 5}}")
        known = {"limit": 1, "max_new_tokens": 1, "rounds": 3}
        for key, value in raw.items():
            if key not in known:
                raise DataError(f"{where}: unknown speed option {key!r} (valid: {', '.join(known)})")
            if not isinstance(value, int) or isinstance(value, bool) or value < known[key]:
                raise DataError(f"{where}: speed option {key} must be an integer >= {known[key]}, got {value!r}")
        return cls(**raw)


def spread(values: list[float]) -> dict[str, Any]:
    """min / median / max of the repeats, and all of them (in round order)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "values": values}


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Reference:
    """A decode step's shape in plain torch (per layer: q/k/v/out projections, attention over a fixed context,
    a SiLU MLP) on fixed random tensors: the yardstick the decode is divided by."""

    def __init__(self, device: torch.device) -> None:
        import torch

        g = torch.Generator().manual_seed(0)
        h, b = REF_HIDDEN, REF_BATCH

        def rand(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, generator=g) / shape[-1] ** 0.5).to(device)

        self.device = device
        self.x = rand(b, h)
        self.weights = [(rand(h, 4 * h), rand(h, h), rand(h, 4 * h), rand(4 * h, h)) for _ in range(REF_LAYERS)]
        self.keys = rand(b, REF_HEADS, REF_CONTEXT, h // REF_HEADS)

    def _once(self) -> None:
        import torch

        b, heads = REF_BATCH, REF_HEADS
        with torch.inference_mode():
            for _ in range(REF_STEPS):
                x = self.x
                for qkv, out, up, down in self.weights:
                    q = (x @ qkv)[:, : x.shape[1]].view(b, heads, 1, -1)
                    att = torch.softmax(q @ self.keys.transpose(-1, -2), dim=-1) @ self.keys
                    x = x + att.reshape(b, -1) @ out
                    x = x + torch.nn.functional.silu(x @ up) @ down
        _sync(self.device)

    def seconds(self, clock: Callable[[], float]) -> float:
        """The best of ``REF_BURSTS`` bursts on ``clock`` (noise only ever adds time)."""
        best = float("inf")
        for _ in range(REF_BURSTS):
            start = clock()
            self._once()
            best = min(best, clock() - start)
        return best


@dataclass
class ProbeCell:
    """One cell to time: its gate key, and how to decode the probe workload once (returns generated tokens)."""

    key: str
    policy: str
    decode: Callable[[int], int]  # max_new_tokens -> tokens generated
    threads: int
    set_threads: Callable[[], int]


def measure(cells: list[ProbeCell], spec: ProbeSpec, device: torch.device, clock_name: str,
            on_round: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Time every cell ``spec.rounds`` times, interleaved, each decode right after a reference burst."""
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    reference = Reference(device)
    for cell in cells:  # warm-up: lazy initialisation, allocator, predictor weights paged in
        cell.set_threads()
        cell.decode(max(1, spec.max_new_tokens // 4))
        reference.seconds(clock)
    raw: dict[str, dict[str, list[float]]] = {c.key: {"decode_ms_per_token": [], "reference_ms_per_step": [],
                                                      "wall_ms_per_token": []} for c in cells}
    cpu_total = wall_total = 0.0
    for r in range(spec.rounds):
        shift = r % len(cells)
        for cell in cells[shift:] + cells[:shift]:
            cell.set_threads()
            ref = reference.seconds(clock) / REF_STEPS
            wall, cpu = time.perf_counter(), time.process_time()
            start = clock()
            tokens = max(1, cell.decode(spec.max_new_tokens))
            took = clock() - start
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            cpu_total, wall_total = cpu_total + cpu, wall_total + wall
            row = raw[cell.key]
            row["decode_ms_per_token"].append(1000.0 * took / tokens)
            row["reference_ms_per_step"].append(1000.0 * ref)
            row["wall_ms_per_token"].append(1000.0 * wall / tokens)
        if on_round is not None:
            on_round(r)
    full = next((c.key for c in cells if c.policy == "full"), None)
    entries = {c.key: {"policy": c.policy, "threads": c.threads, **figures(raw[c.key], raw.get(full or ""))}
               for c in cells}
    return {
        "version": PROBE_VERSION, "spec": asdict(spec), "clock": clock_name, "reference": REFERENCE,
        "device": str(device), "cpu_share": cpu_total / wall_total if wall_total else None, "entries": entries,
    }


def figures(raw: dict[str, list[float]], full: dict[str, list[float]] | None) -> dict[str, Any]:
    """A cell's figures from its per-round timings (and ``full``'s, measured in the same rounds)."""
    decode, ref = raw["decode_ms_per_token"], raw["reference_ms_per_step"]
    out = {"raw": raw, "ms_per_token": spread(decode), "wall_ms_per_token": spread(raw["wall_ms_per_token"]),
           "vs_reference": spread([d / r for d, r in zip(decode, ref)])}
    if full is not None:
        out["vs_full"] = spread([d / f for d, f in zip(decode, full["decode_ms_per_token"])])
    return out


def clock_for(backend: str, device: str) -> str:
    """``cpu`` where the decode is this process's CPU work (the transformers backend on CPU), else ``wall``."""
    return "cpu" if backend == "transformers" and device == "cpu" else "wall"


def probe_sweep(cells: list[Any], keys: list[str], spec: ProbeSpec, engines: dict[Any, Any],
                on_round: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Time each distinct sweep cell (``keys[i]`` is ``cells[i]``'s gate key; seeds of one key are one cell) on
    the probe workload, reusing the sweep's engines."""
    import torch

    places = {(c.backend, c.device) for c in cells}
    if len(places) != 1:
        raise DataError(f"the speed probe times one backend on one device; this grid has {sorted(places)}")
    (backend_name, device), = places
    probe: list[ProbeCell] = []
    for options, key in zip(cells, keys):
        if key in (c.key for c in probe):
            continue
        small = options.replace(limit=spec.limit, max_new_tokens=spec.max_new_tokens)
        plan = prepare(small)
        (name, policy), = plan.policies.items()
        engine_key = options.engine_key
        engine = engines.get(engine_key)
        if engine is None:
            engine = engines[engine_key] = build_backend(options.backend, **options.backend_kwargs())
        engine.prepare(policy)
        prompts = PromptWorkload(prompts_path(options), spec.limit, options.chat).prompt_ids(engine)
        requests = [GenerationRequest(sid, ids) for sid, ids in prompts.items()]
        schedule = plan.schedule if policy.evicts else None

        def decode(n: int, engine=engine, policy=policy, schedule=schedule, plan=plan, requests=requests) -> int:
            results = engine.generate(requests, policy, schedule, replace(plan.sampling, max_new_tokens=n))
            return sum(r.generated_tokens for r in results)

        probe.append(ProbeCell(key, name, decode, small.apply_threads(), small.apply_threads))
    return measure(probe, spec, torch.device(device), clock_for(backend_name, device), on_round)
