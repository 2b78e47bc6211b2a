"""Experiment: fine-tune the shipped tiny reasoner with *context drop-out* and see if it survives eviction.

During training, 60% of the trace tokens that are not result statements become invisible to queries 32-120
tokens after them (a 4D attention mask), which is what an eviction policy does to the context. On 2026-11-23,
300 steps (about 3 minutes on 2 cores) lifted the oracle at a 86-token budget from 13.5% to 56% on 100 held-out
problems, while window stayed at 10% and full at 100%. Not yet part of ``make-tiny-reasoner``.

Usage: python benchmarks/context_dropout_finetune.py STEPS OUT_DIR
then:  dynts-bench run --model OUT_DIR -p full -p window -p oracle --budget 86 --limit 100
"""
import random
import shutil
import sys
import time

import torch
from torch import nn
from transformers import LlamaForCausalLM

from backends.hf.loading import tiny_reasoner_dir
from harness.tinyreasoner.task import DEF_NAME, DEF_VALUE, Knobs, token_roles
from harness.tinyreasoner.train import IGNORE, make_batch
from harness.tinyreasoner.vocab import VOCAB

torch.set_num_threads(2)
torch.manual_seed(0)
SHIPPED = str(tiny_reasoner_dir())
m = LlamaForCausalLM.from_pretrained(SHIPPED, attn_implementation="sdpa")
m.train()
opt = torch.optim.AdamW(m.parameters(), lr=5e-4, weight_decay=0.01)
rng = random.Random(1)
t0 = time.time()
steps, out = int(sys.argv[1]), sys.argv[2]
for step in range(steps):
    x, y, _ = make_batch(rng, 16, Knobs(), 7)
    B, T = x.shape
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool)).repeat(B, 1, 1)
    for b in range(B):
        words = [VOCAB[i] for i in x[b].tolist()]
        start = words.index("<think>") + 1
        roles = token_roles(words[start:])
        for j, r in enumerate(roles):
            if r not in (DEF_NAME, DEF_VALUE) and rng.random() < 0.6:
                p = start + j
                gone = p + rng.randint(32, 120)
                allowed[b, gone:, p] = False
    mask = torch.zeros(B, 1, T, T).masked_fill(~allowed[:, None], float("-inf"))
    logits = m(input_ids=x, attention_mask=mask).logits[:, :-1]
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1), ignore_index=IGNORE)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    if step % 50 == 0:
        print(step, round(float(loss.detach()), 4), round(time.time() - t0), flush=True)
m.save_pretrained(out)
for f in ("tokenizer.json","tokenizer_config.json","chat_template.jinja","generation_config.json"):
    shutil.copy(f"{SHIPPED}/{f}", f"{out}/{f}")
