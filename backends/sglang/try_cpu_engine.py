"""SGLang's bare engine on a CPU without CUDA (SGLang 0.5.23, torch 2.13.0+cpu), without the policy: the shim, the
CPU platform and the flags the backend sets -- the recipe that first made it generate, kept as a quick check of
the CPU path (the backend's tests go further). Run in the SGLang CPU environment:

    OMP_NUM_THREADS=1 VENV/bin/python -m backends.sglang.try_cpu_engine [--max-new-tokens N] [--problems N]

It generates greedily for the first held-out tiny-reasoner problems and prints the token ids (and, with
``--compare``, whether they equal the transformers backend's). Where it stops is the state of the CPU path.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "harness" / "tinyreasoner" / "model"
HELDOUT = ROOT / "harness" / "data" / "tiny_reasoner_heldout.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--problems", type=int, default=2)
    parser.add_argument("--compare", action="store_true", help="also run the transformers backend and compare")
    args = parser.parse_args()
    from backends.sglang.backend import engine_args, prepare_cpu

    prepare_cpu()  # SGLANG_USE_CPU_ENGINE=1 and the CPU shim, before SGLang is imported
    t0 = time.perf_counter()
    import sglang

    from backends.hf.tokenizer import TokenizerText

    print(f"sglang {sglang.__version__} imported in {time.perf_counter() - t0:.1f}s", flush=True)
    problems = [json.loads(line) for line in HELDOUT.read_text().splitlines()[: args.problems]]
    from transformers import AutoTokenizer

    text = TokenizerText()
    text.tokenizer = AutoTokenizer.from_pretrained(str(MODEL))
    prompts = [text.encode_prompt(p["prompt"]) for p in problems]
    t0 = time.perf_counter()
    engine = sglang.Engine(**engine_args(str(MODEL), "cpu", "float32", len(prompts), 1024, None))
    print(f"engine up in {time.perf_counter() - t0:.1f}s", flush=True)
    try:
        params = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0}
        t0 = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        print(f"generated in {time.perf_counter() - t0:.1f}s", flush=True)
        ids = [o["output_ids"] for o in outs]
        for p, o in zip(problems, ids):
            print(p["id"], o[:32])
    finally:
        engine.shutdown()
    if args.compare:
        from backends.base import GenerationRequest, SamplingParams
        from backends.hf.backend import TransformersBackend
        from zoo import build_policy

        hf = TransformersBackend(model=str(MODEL), batch_size=len(prompts))
        full = build_policy("full")
        hf.prepare(full)
        res = hf.generate([GenerationRequest(p["id"], q) for p, q in zip(problems, prompts)], full, None,
                          SamplingParams(max_new_tokens=args.max_new_tokens))
        same = sum(r.output_ids == o for r, o in zip(res, ids))
        print(f"identical to transformers: {same}/{len(ids)}")


if __name__ == "__main__":
    main()
