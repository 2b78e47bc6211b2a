"""The paper's latency setting at reduced length, side by side in one run: full vs window vs dynts.

A model of DeepSeek-R1-Distill-Qwen-7B's shape (Qwen2: 28 layers, hidden 3584, 28 heads, 4 KV heads) with
random weights -- no hub needed; speed and memory do not depend on the weights -- in bf16, a batch of 20,
the paper's schedule scaled from 16k to 4096 new tokens (trigger 5000 / window 2000 -> 1280 / 512, ratio
0.4), EOS ignored, and a DynTS head of the paper's shape (8192 / 2048, random). Prints ms per decode step
*including* compaction (the paper's figures exclude it, so both are shown), tokens/s, the KV bytes the cache
really allocated, CUDA peak memory, and every ratio to ``full``.

    python benchmarks/gpu_latency.py --out gpu-check/latency.json          # on one NVIDIA GPU
    python benchmarks/gpu_latency.py --shape tiny --device cpu --new-tokens 24 --batch 2   # the CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.base import GenerationRequest, SamplingParams  # noqa: E402
from backends.hf.backend import kv_bytes_per_token  # noqa: E402
from backends.hf.decode import ModelParts, generate_batch  # noqa: E402
from backends.hf.observe import register  # noqa: E402
from zoo import build_policy  # noqa: E402
from zoo.base import ModelInfo  # noqa: E402
from zoo.predictor import ImportancePredictor, PredictorConfig  # noqa: E402
from zoo.schedule import EvictionSchedule  # noqa: E402

#: model shapes: the paper's 7B, and a tiny one for the CPU-side test of this script
SHAPES = {
    "qwen2-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768),
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
}
POLICIES = ("full", "window", "dynts")
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


def parse(argv: list[str] | None = None) -> tuple[Setting, Path | None]:
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
    p.add_argument("--out", type=Path, default=None, help="write the measurements here as JSON")
    a = p.parse_args(argv)
    for name in ("batch", "prompt", "new_tokens", "trigger"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.trigger <= a.window:
        p.error(f"--trigger {a.trigger} must be larger than --window {a.window}")
    if a.prompt + a.window >= a.trigger:
        p.error(f"--prompt {a.prompt} plus --window {a.window} must stay below --trigger {a.trigger}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda needs an NVIDIA GPU; use --device cpu for the smoke test")
    return Setting(a.shape, a.dtype, a.device, a.batch, a.prompt, a.new_tokens, a.trigger, a.window, a.ratio), a.out


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


def measure(setting: Setting, on_row=None) -> list[dict]:
    """Every policy in turn on the same requests; ``on_row(rows)`` after each, so a cut-off run keeps its rows."""
    model = build_model(setting)
    parts = parts_of(model)
    schedule = EvictionSchedule(mode="paper", trigger_len=setting.trigger, window=setting.window,
                                ratio=setting.ratio)
    sampling = SamplingParams(max_new_tokens=setting.new_tokens)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    requests = [GenerationRequest(f"s{i}", torch.randint(1, vocab, (setting.prompt,), generator=g).tolist())
                for i in range(setting.batch)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        policies = {name: (dynts_policy(setting, model.config.hidden_size, Path(tmp)) if name == "dynts"
                           else build_policy(name)) for name in POLICIES}
        for name, policy in policies.items():
            if setting.device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            _sync(setting.device)
            started = time.perf_counter()
            results = generate_batch(parts, requests, policy, schedule if policy.evicts else None, sampling,
                                     torch.device(setting.device), record_steps=True)
            _sync(setting.device)
            wall = time.perf_counter() - started
            rows.append(_with_ratios(_row(name, results, wall, setting), rows[0] if rows else None))
            if on_row is not None:
                on_row(rows)
    return rows


def _with_ratios(row: dict, full: dict | None) -> dict:
    """Add every ratio to ``full`` (the first row; a row without one is ``full`` itself)."""
    full = full or row
    row["speedup_vs_full"] = full["ms_per_step_median"] / row["ms_per_step_median"]
    row["speedup_vs_full_excl_compaction"] = (full["ms_per_step_excl_policy_median"]
                                              / row["ms_per_step_excl_policy_median"])
    row["kv_allocated_vs_full"] = row["kv_allocated_bytes"] / full["kv_allocated_bytes"]
    if full.get("cuda_peak_bytes"):
        row["cuda_peak_vs_full"] = row["cuda_peak_bytes"] / full["cuda_peak_bytes"]
    return row


def _row(name: str, results, wall: float, setting: Setting) -> dict:
    steps = results[0].extra["step_s"]
    policy_steps = results[0].extra["step_policy_s"]
    excl = [s - p for s, p in zip(steps, policy_steps)]
    generated = sum(r.generated_tokens for r in results)
    row = {
        "policy": name,
        "steps": len(steps),
        "ms_per_step_median": 1000 * statistics.median(steps),
        "ms_per_step_p10_p90": [1000 * statistics.quantiles(steps, n=10)[0],
                                1000 * statistics.quantiles(steps, n=10)[-1]] if len(steps) >= 10 else None,
        "ms_per_step_excl_policy_median": 1000 * statistics.median(excl),
        "compaction_share": sum(policy_steps) / sum(steps) if sum(steps) else 0.0,
        "tokens_per_s": generated / wall,
        "wall_s": wall,
        "kv_allocated_bytes": results[0].extra["kv_batch_allocated_bytes"],
        "kv_peak_tokens": max(r.kv_peak_tokens for r in results),
        "compressions": results[0].compressions,
    }
    if setting.device.startswith("cuda"):
        row["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return row


def table(rows: list[dict], setting: Setting) -> str:
    """The side-by-side table, plain text (it goes to logs)."""
    head = (f"{setting.shape}, {setting.dtype}, batch {setting.batch}, prompt {setting.prompt}, "
            f"{setting.new_tokens} new tokens, trigger {setting.trigger}, window {setting.window}, "
            f"ratio {setting.ratio}, device {setting.device}")
    cols = ("policy", "ms/step", "excl. policy", "policy share", "tok/s", "KV allocated", "speedup",
            "speedup excl.", "KV vs full")
    lines = [head, " | ".join(cols)]
    for r in rows:
        lines.append(" | ".join([
            r["policy"], f"{r['ms_per_step_median']:.2f}", f"{r['ms_per_step_excl_policy_median']:.2f}",
            f"{r['compaction_share']:.1%}", f"{r['tokens_per_s']:.0f}", f"{r['kv_allocated_bytes'] / 2**20:.1f} MiB",
            f"{r['speedup_vs_full']:.2f}x", f"{r['speedup_vs_full_excl_compaction']:.2f}x",
            f"{r['kv_allocated_vs_full']:.2f}x"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    setting, out = parse(argv)

    def write(rows: list[dict]) -> None:
        print(f"{rows[-1]['policy']} done: {rows[-1]['ms_per_step_median']:.2f} ms/step", flush=True)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_suffix(".partial")
            partial.write_text(json.dumps({
                "setting": setting.__dict__, "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "rows": rows, "complete": len(rows) == len(POLICIES)}, indent=2))
            partial.replace(out)

    rows = measure(setting, on_row=write)
    print(table(rows, setting), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
