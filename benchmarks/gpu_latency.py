"""The paper's latency setting at reduced length, side by side in one run: full vs window vs dynts.

A model of DeepSeek-R1-Distill-Qwen-7B's shape (Qwen2: 28 layers, hidden 3584, 28 heads, 4 KV heads) with
random weights -- no hub needed; speed and memory do not depend on the weights -- in bf16, a batch of 20,
the paper's schedule scaled from 16k to 4096 new tokens (trigger 5000 / window 2000 -> 1280 / 512, ratio
0.4), EOS ignored, and a DynTS head of the paper's shape (8192 / 2048, random). Prints ms per decode step
*including* compaction (the paper's figures exclude it, so both are shown), tokens/s, the KV bytes the cache
really allocated, CUDA peak memory, and every ratio to ``full``. ``--capture both`` runs every policy eagerly and
with the decode step replayed as CUDA graphs (``+graphs``, ``backends.hf.compiled``). Every row also gets the
bandwidth limit of its step: the bytes it must read at least -- every weight once, plus the KV cache the batch
holds -- over the GPU's memory bandwidth (``--bandwidth-gbs``, known for H100 / H200 / A100), and the step's
ratio to it.

    python -m benchmarks.gpu_latency --out gpu-check/latency.json          # on one NVIDIA GPU
    python -m benchmarks.gpu_latency --shape tiny --device cpu --new-tokens 24 --batch 2   # the CPU smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import kv_bytes_per_token
from backends.hf.compiled import compile_parts
from backends.hf.decode import ModelParts, generate_batch
from backends.hf.observe import register
from zoo import build_policy
from zoo.base import ModelInfo
from zoo.predictor import ImportancePredictor, PredictorConfig
from zoo.schedule import EvictionSchedule

#: model shapes: the paper's 7B, and a tiny one for the CPU-side test of this script
SHAPES = {
    "qwen2-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768),
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
}
POLICIES = ("full", "window", "dynts")
GRAPHS = "+graphs"  # suffix of a policy run with the decode step replayed as CUDA graphs
#: HBM bandwidth in GB/s by a substring of the device name (the vendors' datasheets)
BANDWIDTH_GBS = {"H200": 4800.0, "H100 NVL": 3900.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0, "A100": 1555.0}
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class Setting:
    shape: str = "qwen2-7b"
    dtype: str = "bfloat16"
    device: str = "cuda"
    batch: int = 20
    prompt: int = 128
    new_tokens: int = 4096
    trigger: int = 1280
    window: int = 512
    ratio: float = 0.4
    capture: str = "off"  # off | on | both
    bandwidth_gbs: float | None = None

    def variants(self) -> tuple[str, ...]:
        """Policy names as run: eager, ``+graphs``, or both."""
        eager = POLICIES if self.capture in ("off", "both") else ()
        graphs = tuple(p + GRAPHS for p in POLICIES) if self.capture in ("on", "both") else ()
        return eager + graphs


def parse(argv: list[str] | None = None) -> tuple[Setting, int, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-7b")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per sequence")
    p.add_argument("--new-tokens", type=int, default=4096)
    p.add_argument("--trigger", type=int, default=1280, help="paper mode: KV length that triggers compression")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--ratio", type=float, default=0.4)
    p.add_argument("--repeats", type=int, default=1, help="runs of each policy, in rotated order")
    p.add_argument("--capture", choices=("off", "on", "both"), default="off",
                   help="replay the decode step as CUDA graphs (torch.compile reduce-overhead): off, on, or both")
    p.add_argument("--bandwidth-gbs", type=float, default=None,
                   help="memory bandwidth for the limit (default: known from the GPU's name)")
    p.add_argument("--out", type=Path, default=None, help="write the measurements here as JSON")
    a = p.parse_args(argv)
    for name in ("batch", "prompt", "new_tokens", "trigger", "repeats"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.trigger <= a.window:
        p.error(f"--trigger {a.trigger} must be larger than --window {a.window}")
    if a.prompt + a.window >= a.trigger:
        p.error(f"--prompt {a.prompt} plus --window {a.window} must stay below --trigger {a.trigger}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda needs an NVIDIA GPU; use --device cpu for the smoke test")
    if a.capture != "off" and not a.device.startswith("cuda"):
        p.error(f"--capture {a.capture} replays CUDA graphs: it needs --device cuda (use --capture off on CPU)")
    if a.bandwidth_gbs is not None and a.bandwidth_gbs <= 0:
        p.error(f"--bandwidth-gbs must be > 0, got {a.bandwidth_gbs}")
    setting = Setting(a.shape, a.dtype, a.device, a.batch, a.prompt, a.new_tokens, a.trigger, a.window, a.ratio,
                      a.capture, a.bandwidth_gbs or known_bandwidth(a.device))
    return setting, a.repeats, a.out


def known_bandwidth(device: str) -> float | None:
    """The memory bandwidth of the named CUDA device, if it is in ``BANDWIDTH_GBS``."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((gbs for key, gbs in BANDWIDTH_GBS.items() if key in name), None)


def limit_ms(weight_bytes: int, kv_bytes: float, bandwidth_gbs: float) -> float:
    """The fastest a decode step can be: every weight and the held KV cache read once at full bandwidth."""
    return 1000 * (weight_bytes + kv_bytes) / (bandwidth_gbs * 1e9)


def build_model(setting: Setting):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**SHAPES[setting.shape], eos_token_id=None, pad_token_id=0)
    config._attn_implementation = register()
    with torch.device(setting.device):
        model = Qwen2ForCausalLM(config).to(DTYPES[setting.dtype])
    return model.eval()


def parts_of(model) -> ModelParts:
    config = model.config
    return ModelParts(decoder=model.get_decoder(), lm_head=model.get_output_embeddings(),
                      num_layers=config.num_hidden_layers, kv_bytes_per_token=kv_bytes_per_token(config, model.dtype),
                      eos_ids=frozenset(), pad_id=0)


def dynts_policy(setting: Setting, hidden: int, directory: Path):
    """DynTS with a random head of the paper's shape (8192 / 2048 on a 7B; the default shape on tiny)."""
    sizes = [8192, 2048] if setting.shape == "qwen2-7b" else PredictorConfig.default_sizes(hidden)
    torch.manual_seed(1)
    ImportancePredictor(PredictorConfig(f"random-{setting.shape}", hidden, sizes)).save(directory)
    policy = build_policy("dynts", predictor=str(directory))
    policy.prepare(ModelInfo(f"random-{setting.shape}", f"random-{setting.shape}", hidden, 1, lambda: []))
    return policy


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def orders(repeats: int, names: tuple[str, ...] = POLICIES) -> list[tuple[str, ...]]:
    """The policy order of each repeat, rotated so that no policy always runs first (warm-up, clocks)."""
    return [names[r % len(names):] + names[: r % len(names)] for r in range(repeats)]


def measure(setting: Setting, repeats: int = 1, on_run=None) -> list[dict]:
    """Every policy ``repeats`` times on the same requests, in rotated order; one row per policy.

    ``on_run(rows)`` follows every single run with the rows of what has run so far, so a run cut off by its
    time limit keeps what it measured.
    """
    model = build_model(setting)
    parts = parts_of(model)
    captured = compile_parts(parts, torch.device(setting.device)) if setting.capture != "off" else None
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    schedule = EvictionSchedule(mode="paper", trigger_len=setting.trigger, window=setting.window,
                                ratio=setting.ratio)
    sampling = SamplingParams(max_new_tokens=setting.new_tokens)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    requests = [GenerationRequest(f"s{i}", torch.randint(1, vocab, (setting.prompt,), generator=g).tolist())
                for i in range(setting.batch)]
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        policies = {name: (dynts_policy(setting, model.config.hidden_size, Path(tmp)) if name == "dynts"
                           else build_policy(name)) for name in POLICIES}
        for order in orders(repeats, setting.variants()):
            for name in order:
                policy = policies[name.removesuffix(GRAPHS)]
                run_parts = captured if name.endswith(GRAPHS) else parts
                gc.collect()
                if setting.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                _sync(setting.device)
                started = time.perf_counter()
                results = generate_batch(run_parts, requests, policy, schedule if policy.evicts else None,
                                         sampling, torch.device(setting.device), record_steps=True)
                _sync(setting.device)
                wall = time.perf_counter() - started
                run = _run(results, wall, setting)
                if setting.bandwidth_gbs:
                    kv = setting.batch * run["mean_held_tokens"] * parts.kv_bytes_per_token
                    run["limit_ms"] = limit_ms(weight_bytes, kv, setting.bandwidth_gbs)
                    run["x_limit"] = run["ms_per_step_median"] / run["limit_ms"]
                runs.setdefault(name, []).append(run)
                del results
                if on_run is not None:
                    on_run(summarise(runs))
    return summarise(runs)


def _run(results, wall: float, setting: Setting) -> dict:
    """One policy's one run: its per-step medians and what it allocated."""
    steps = results[0].extra["step_s"]
    policy_steps = results[0].extra["step_policy_s"]
    run = {
        "steps": len(steps),
        "ms_per_step_median": 1000 * statistics.median(steps),
        "ms_per_step_p10_p90": [1000 * q for q in statistics.quantiles(steps, n=10)[::8]] if len(steps) >= 10
        else None,
        "ms_per_step_excl_policy_median": 1000 * statistics.median(s - p for s, p in zip(steps, policy_steps)),
        "compaction_share": sum(policy_steps) / sum(steps) if sum(steps) else 0.0,
        "tokens_per_s": sum(r.generated_tokens for r in results) / wall,
        "wall_s": wall,
        "kv_allocated_bytes": results[0].extra["kv_batch_allocated_bytes"],
        "kv_peak_tokens": max(r.kv_peak_tokens for r in results),
        "compressions": results[0].compressions,
        "mean_held_tokens": statistics.fmean(results[0].extra["step_cache_tokens"]),
    }
    if setting.device.startswith("cuda"):
        run["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return run


def summarise(runs: dict[str, list[dict]]) -> list[dict]:
    """One row per policy (in ``POLICIES`` order): medians over its runs, the runs' range, ratios to ``full``."""
    rows = []
    for name in (n for n in (*POLICIES, *(p + GRAPHS for p in POLICIES)) if n in runs):
        these = runs[name]
        row = {"policy": name, "repeats": len(these), "runs": these}
        for key in ("ms_per_step_median", "ms_per_step_excl_policy_median", "compaction_share", "tokens_per_s",
                    "wall_s", "limit_ms", "x_limit"):
            if key in these[0]:
                row[key] = statistics.median(r[key] for r in these)
        row["ms_per_step_range"] = [min(r["ms_per_step_median"] for r in these),
                                    max(r["ms_per_step_median"] for r in these)]
        for key in ("kv_allocated_bytes", "kv_peak_tokens", "compressions", "cuda_peak_bytes"):
            if key in these[0]:
                row[key] = max(r[key] for r in these)
        rows.append(row)
    by_name = {row["policy"]: row for row in rows}
    for row in rows:
        graphs = row["policy"].endswith(GRAPHS)
        full = by_name.get("full" + GRAPHS if graphs else "full")
        if full is not None:
            _add_ratios(row, full)
        eager = by_name.get(row["policy"].removesuffix(GRAPHS))
        if graphs and eager is not None:
            row["graphs_speedup"] = eager["ms_per_step_median"] / row["ms_per_step_median"]
    return rows


def _add_ratios(row: dict, full: dict) -> None:
    row["speedup_vs_full"] = full["ms_per_step_median"] / row["ms_per_step_median"]
    # the ratio's range: this policy's fastest run against full's slowest, and the other way round
    row["speedup_vs_full_range"] = [full["ms_per_step_range"][0] / row["ms_per_step_range"][1],
                                    full["ms_per_step_range"][1] / row["ms_per_step_range"][0]]
    row["speedup_vs_full_excl_compaction"] = (full["ms_per_step_excl_policy_median"]
                                              / row["ms_per_step_excl_policy_median"])
    row["kv_allocated_vs_full"] = row["kv_allocated_bytes"] / full["kv_allocated_bytes"]
    if full.get("cuda_peak_bytes"):
        row["cuda_peak_vs_full"] = row["cuda_peak_bytes"] / full["cuda_peak_bytes"]


def table(rows: list[dict], setting: Setting) -> str:
    """The side-by-side table, plain text (it goes to logs); a range is the spread over the repeats."""
    head = (f"{setting.shape}, {setting.dtype}, batch {setting.batch}, prompt {setting.prompt}, "
            f"{setting.new_tokens} new tokens, trigger {setting.trigger}, window {setting.window}, "
            f"ratio {setting.ratio}, device {setting.device}, {rows[0]['repeats']} repeat(s) in rotated order, "
            f"bandwidth {setting.bandwidth_gbs or 'unknown'} GB/s")
    cols = ("policy", "ms/step (range)", "excl. policy", "policy share", "tok/s", "KV allocated", "speedup (range)",
            "speedup excl.", "KV vs full", "CUDA peak vs full", "limit ms", "x limit", "graphs gain")
    lines = [head, " | ".join(cols)]
    for r in rows:
        low, high = r["ms_per_step_range"]
        s_low, s_high = r.get("speedup_vs_full_range", (float("nan"), float("nan")))
        lines.append(" | ".join([
            r["policy"], f"{r['ms_per_step_median']:.2f} ({low:.2f}-{high:.2f})",
            f"{r['ms_per_step_excl_policy_median']:.2f}", f"{r['compaction_share']:.1%}", f"{r['tokens_per_s']:.0f}",
            f"{r['kv_allocated_bytes'] / 2**20:.1f} MiB",
            f"{r.get('speedup_vs_full', float('nan')):.2f}x ({s_low:.2f}-{s_high:.2f})",
            f"{r.get('speedup_vs_full_excl_compaction', float('nan')):.2f}x",
            f"{r.get('kv_allocated_vs_full', float('nan')):.2f}x",
            f"{r['cuda_peak_vs_full']:.2f}x" if "cuda_peak_vs_full" in r else "-",
            f"{r['limit_ms']:.2f}" if "limit_ms" in r else "-", f"{r['x_limit']:.1f}x" if "x_limit" in r else "-",
            f"{r['graphs_speedup']:.2f}x" if "graphs_speedup" in r else "-"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    setting, repeats, out = parse(argv)
    total = repeats * len(setting.variants())

    def write(rows: list[dict]) -> None:
        done = sum(r["repeats"] for r in rows)
        print(f"run {done}/{total} done: " + ", ".join(
            f"{r['policy']} {r['ms_per_step_median']:.2f} ms/step" for r in rows), flush=True)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_suffix(".partial")
            partial.write_text(json.dumps({
                "setting": setting.__dict__, "repeats": repeats, "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "rows": rows, "complete": done == total}, indent=2))
            partial.replace(out)

    rows = measure(setting, repeats, on_run=write)
    print(table(rows, setting), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
