"""Vanilla vLLM (no custom scheduler or worker), greedy, for the byte-identity test: run as a script.

    python vanilla_vllm.py SPEC.json   # {"prompts": [[ids]], "max_tokens", "stop_token_ids", "model"}

Writes SPEC.out.json: the output token ids of every prompt, in order.
"""

import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_USE_V2_MODEL_RUNNER="0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    spec_path = Path(sys.argv[1])
    spec = json.loads(spec_path.read_text())
    llm = LLM(model=spec["model"], dtype="float32", max_model_len=1024, enforce_eager=True, block_size=32,
              enable_prefix_caching=False, max_num_seqs=8, seed=0)
    params = SamplingParams(max_tokens=spec["max_tokens"], temperature=0.0, stop_token_ids=spec["stop_token_ids"])
    outs = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], params, use_tqdm=False)
    spec_path.with_suffix(".out.json").write_text(json.dumps([list(o.outputs[0].token_ids) for o in outs]))
