"""Parity with kvpress: the same keys, queries, values, hidden states and attention to kvpress's press ``score``
and to ours, per press, on a real model's layers.

Runs only in a venv with kvpress installed (kvpress pins its own transformers; never part of the core tests):

    python3 -m venv /tmp/kvpress-venv
    /tmp/kvpress-venv/bin/pip install torch==2.13.0          # the CPU wheel first, so no CUDA build comes in
    /tmp/kvpress-venv/bin/pip install kvpress==0.5.4         # with the transformers it pins
    PYTHONPATH=$PWD /tmp/kvpress-venv/bin/python benchmarks/kvpress_parity.py --model DIR [--out results/...md]

DIR is a local Llama-family checkpoint (the default model's cache directory works). The text is this file's
own source, tokenised, so every run on one commit feeds the same tokens. For every chosen layer the script takes
the attention module's input (``input_layernorm`` of the residual stream), its post-RoPE keys and queries, its
values and the model's own eager attention weights, calls kvpress's ``score`` and ours, and prints per press:

- the largest absolute difference between the two scores where they are defined alike (per KV head for the key
  scorers; averaged over heads for the attention scorers, whose kvpress scores are already head-averaged), and
  that difference relative to the largest kvpress score;
- the kept-set agreement: the share of the tokens kvpress keeps in each (layer, KV head), at half the cache,
  that our single set (averaged over heads and layers) keeps as well -- the cost of one set for every layer --
  and the same share for a set per layer (heads averaged only), which separates the two averagings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo import build_policy  # noqa: E402
from zoo.base import CacheView  # noqa: E402
from zoo.curdkv import local_key_leverage  # noqa: E402
from zoo.keydiff import key_diversity_scores  # noqa: E402
from zoo.knorm import key_norm_scores  # noqa: E402


@dataclass
class Layer:
    """One attention layer's inputs and outputs on the sequence (batch 1)."""

    module: torch.nn.Module
    hidden: torch.Tensor  # [1, T, hidden] the attention module's input
    keys: torch.Tensor  # [1, KVH, T, D] post-RoPE
    values: torch.Tensor  # [1, KVH, T, D]
    queries: torch.Tensor  # [1, H, T, D] post-RoPE
    attention: torch.Tensor  # [1, H, T, T] the model's eager attention probabilities
    position_embeddings: tuple[torch.Tensor, torch.Tensor]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the half-split layout of Llama checkpoints."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


def capture_layers(model: torch.nn.Module, ids: torch.Tensor, which: list[int]) -> list[Layer]:
    """Run the model once (eager attention) and rebuild each chosen layer's inputs from its own projections."""
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, output_attentions=True)
        positions = torch.arange(ids.shape[1])[None]
        layers = []
        for i in which:
            block = model.model.layers[i]
            attn = block.self_attn
            hidden = block.input_layernorm(out.hidden_states[i])
            cos, sin = model.model.rotary_emb(hidden, positions)
            split = lambda x, d=attn.head_dim: x.view(1, ids.shape[1], -1, d).transpose(1, 2)  # noqa: E731
            layers.append(Layer(
                module=attn, hidden=hidden,
                keys=rotate(split(attn.k_proj(hidden)), cos, sin), values=split(attn.v_proj(hidden)),
                queries=rotate(split(attn.q_proj(hidden)), cos, sin), attention=out.attentions[i].float(),
                position_embeddings=(cos, sin)))
    return layers


def view_of(layers: list[Layer], query_window: int) -> CacheView:
    t = layers[0].keys.shape[2]
    positions = torch.arange(t)[None]
    return CacheView(valid=torch.ones(1, t, dtype=torch.bool), positions=positions,
                     token_ids=torch.zeros(1, t, dtype=torch.long), is_prompt=torch.zeros(1, t, dtype=torch.bool),
                     keys=[layer.keys for layer in layers],
                     queries=[layer.queries[:, :, -query_window:] for layer in layers] if query_window else None)


@dataclass
class Case:
    """One press: kvpress's scorer, ours per layer on the comparable slots, and our policy."""

    press: str
    policy: str
    options: dict
    make_press: Callable[[], object]
    ours: Callable[[Layer], torch.Tensor]  # comparable to ``theirs``
    theirs: Callable[[object, Layer], torch.Tensor]  # from kvpress's score
    compared: str


def kvpress_score(press: object, layer: Layer, attentions: torch.Tensor | None = None) -> torch.Tensor:
    kwargs = {"position_embeddings": layer.position_embeddings}
    with torch.no_grad():
        return press.score(layer.module, layer.hidden, layer.keys, layer.values, attentions, kwargs).float()


def cases(window: int, kernel: int, sinks: int, local: int) -> list[Case]:
    from kvpress import CURPress, KeyDiffPress, KnormPress, ObservedAttentionPress, SnapKVPress, TOVAPress

    valid = lambda layer: torch.ones(1, layer.keys.shape[2], dtype=torch.bool)  # noqa: E731
    one = lambda name, **o: (lambda layer: build_policy(name, **o).score(view_of([layer], window))[0])  # noqa: E731
    return [
        Case("KnormPress", "knorm", {}, KnormPress, lambda la: key_norm_scores(la.keys),
             lambda p, la: kvpress_score(p, la), "per KV head, every token"),
        Case("KeyDiffPress", "keydiff", {}, KeyDiffPress, lambda la: key_diversity_scores(la.keys, valid(la)),
             lambda p, la: kvpress_score(p, la), "per KV head, every token"),
        Case("CURPress", "curdkv", {"sinks": sinks, "local_window": local},
             lambda: CURPress(leverage_type="key", num_sinks=sinks, local_window_size=local),
             lambda la: local_key_leverage(la.keys, valid(la), local)[..., sinks:],
             lambda p, la: kvpress_score(p, la)[..., sinks:],
             f'leverage_type="key", per KV head, tokens after the {sinks} sinks'),
        Case("TOVAPress", "tova", {}, TOVAPress, lambda la: one("tova")(la)[:-1],
             lambda p, la: kvpress_score(p, la)[0, 0, :-1], "head-averaged, every token but the newest"),
        Case("ObservedAttentionPress", "observed", {}, ObservedAttentionPress, lambda la: one("observed")(la),
             lambda p, la: kvpress_score(p, la, la.attention[:, :, -1:]).mean(1)[0],
             "head-averaged, every token (kvpress given the step's eager attention)"),
        Case("SnapKVPress", "snapkv", {"obs_window": window, "kernel_size": kernel},
             lambda: SnapKVPress(window_size=window, kernel_size=kernel),
             lambda la: one("snapkv", obs_window=window, kernel_size=kernel)(la)[: -window - kernel // 2] / window,
             lambda p, la: kvpress_score(p, la).mean(1)[0, : -window - kernel // 2],
             f"head-averaged, votes / obs_window, tokens before the window's last {kernel // 2} pooled neighbours"),
    ]


def one_set(case: Case, layers: list[Layer], keep: int) -> torch.Tensor:
    """Bool ``[T]``: the tokens our policy keeps with ``layers``' keys (window and prompt protection off, so that
    only the scores choose)."""
    policy = build_policy(case.policy, **case.options)
    cache = view_of(layers, policy.query_window if "queries" in policy.needs else 0)
    chosen, ok = policy.select(policy.score(cache), cache, torch.tensor([keep]), 0, False)
    kept = torch.zeros(cache.length, dtype=torch.bool)
    kept[chosen[ok]] = True
    return kept


def kept_agreement(case: Case, layers: list[Layer], make: object, keep: int) -> tuple[float, float]:
    """Share of kvpress's kept tokens, per (layer, KV head), that our set keeps: our one set for all the layers,
    and our set of that layer alone (heads averaged only)."""
    everywhere = one_set(case, layers, keep)
    shares: tuple[list[float], list[float]] = ([], [])
    for layer in layers:
        alone = one_set(case, [layer], keep)
        attn = layer.attention[:, :, -1:] if case.press == "ObservedAttentionPress" else None
        for head in kvpress_score(make, layer, attn)[0]:  # [T] per KV head
            theirs = head.topk(keep).indices
            shares[0].append(everywhere[theirs].float().mean().item())
            shares[1].append(alone[theirs].float().mean().item())
    return sum(shares[0]) / len(shares[0]), sum(shares[1]) / len(shares[1])


def streaming_llm_agreement(layers: list[Layer], sinks: int, keep: int) -> float:
    """StreamingLLM keeps positions, not scores: kvpress's kept set at ratio ``1 - keep / T`` against ours."""
    from kvpress import StreamingLLMPress

    t = layers[0].keys.shape[2]
    press = StreamingLLMPress(compression_ratio=1 - keep / t, n_sink=sinks)
    theirs = kvpress_score(press, layers[0])[0, 0].topk(int(t * (1 - press.compression_ratio))).indices
    policy = build_policy("streamingllm", sinks=sinks)
    cache = view_of(layers, 0)
    chosen, ok = policy.select(policy.score(cache), cache, torch.tensor([len(theirs)]), 0, False)
    return float(set(chosen[ok].tolist()) == set(theirs.tolist()))


def versions() -> dict[str, str]:
    from importlib.metadata import version

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        sha = ""
    return {"kvpress": version("kvpress"), "transformers": version("transformers"), "torch": torch.__version__,
            "git": sha[:12]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local Llama-family checkpoint directory")
    parser.add_argument("--tokens", type=int, default=512, help="sequence length fed to both")
    parser.add_argument("--layers", default="0,7,15,23,29", help="comma-separated layer indices")
    parser.add_argument("--window", type=int, default=32, help="SnapKV observation window")
    parser.add_argument("--kernel", type=int, default=5, help="SnapKV pooling kernel (kvpress's default)")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--local-window", type=int, default=16, help="CurDKV local window (kvpress's default)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    try:
        import kvpress  # noqa: F401
    except ImportError:
        print("kvpress is not installed here: run this in the kvpress venv (see the docstring)", file=sys.stderr)
        return 2
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        print(f"--model {model_dir} is not a checkpoint directory (no config.json)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    text = Path(__file__).read_text()
    ids = AutoTokenizer.from_pretrained(model_dir)(text, return_tensors="pt").input_ids[:, : args.tokens]
    if ids.shape[1] < args.tokens:
        print(f"--tokens {args.tokens}: this file tokenises to {ids.shape[1]} tokens; pass at most that",
              file=sys.stderr)
        return 2
    which = [int(x) for x in args.layers.split(",")]
    layers = capture_layers(model, ids, which)
    keep = args.tokens // 2
    rows = []
    for case in cases(args.window, args.kernel, args.sinks, args.local_window):
        press = case.make_press()
        diff = scale = 0.0
        for layer in layers:
            ours, theirs = case.ours(layer), case.theirs(press, layer)
            diff = max(diff, (ours.float() - theirs).abs().max().item())
            scale = max(scale, theirs.abs().max().item())
        rows.append((case.press, case.policy, case.compared, diff, diff / max(scale, 1e-30),
                     *kept_agreement(case, layers, press, keep)))
    same = streaming_llm_agreement(layers, args.sinks, keep)
    rows.append(("StreamingLLMPress", "streamingllm", "kept set (positions, no score to compare)", 0.0, 0.0,
                 same, same))
    facts = {**versions(), "model": str(model_dir.name), "tokens": args.tokens, "layers": which, "keep": keep}
    lines = [f"kvpress parity: {json.dumps(facts)}", "",
             "| kvpress press | ours | compared | largest abs difference | relative to kvpress's largest | "
             "kept-set agreement, one set for all layers | same, one set per layer |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {p} | {o} | {c} | {d:.3g} | {r:.3g} | {a:.1%} | {b:.1%} |" for p, o, c, d, r, a, b in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
