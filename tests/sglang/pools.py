"""SGLang's own pools, batch and attention backend, built on CPU the way its scheduler builds them (page size 1,
radix cache disabled), and a driver that runs decode steps through them with the plugin's hooks applied.

Only the model is missing: keys, values and queries of every token are random vectors rotated (RoPE) at the
position the engine hands out, so that an expectation computed from logical positions is independent of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from sglang.srt import runtime_context
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.common import release_kv_cache
from sglang.srt.mem_cache.kv_index_translator import KVIndexTranslator
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixCache
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode
from sglang.srt.model_executor.forward_context import ForwardContext, forward_context
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

from backends.sglang import plugin
from backends.sglang.runtime import request_options
from zoo.schedule import EvictionSchedule

HEADS, HEAD_DIM, LAYERS, POOL = 2, 8, 2, 256
MODEL = "harness/tinyreasoner/model"
_published = False


def publish_server_args() -> ServerArgs:
    """SGLang's process-wide config, as its scheduler publishes it (with the flags the backend sets)."""
    global _published
    args = ServerArgs(model_path=MODEL, device="cpu", page_size=1, disable_radix_cache=True,
                      disable_overlap_schedule=True, attention_backend="torch_native")
    if not _published:
        runtime_context.publish(args, role="scheduler")
        _published = True
    return args


def rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (neox halves, base 10000) of ``x [n, H, D]`` at ``positions [n]``."""
    half = x.shape[-1] // 2
    freqs = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = positions.double()[:, None] * freqs[None, :]
    cos, sin = angles.cos()[:, None, :].float(), angles.sin()[:, None, :].float()
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


@dataclass
class Token:
    """What one token wrote: raw (pre-RoPE) key, value and query per layer; its logical position."""

    position: int
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    q: list[torch.Tensor]


@dataclass
class Track:
    req: Req
    tokens: list[Token] = field(default_factory=list)  # by logical position


class Pools:
    """One scheduler's worth of SGLang memory (``ReqToTokenPool``, ``MHATokenToKVPool``,
    ``TokenToKVPoolAllocator``, a disabled ``RadixCache``) and ``TorchNativeAttnBackend`` over them."""

    def __init__(self, rows: int = 8, context: int = 512, size: int = POOL, seed: int = 0) -> None:
        self.server_args = publish_server_args()
        self.rtp = ReqToTokenPool(size=rows, max_context_len=context, device="cpu", enable_memory_saver=False)
        self.pool = MHATokenToKVPool(size=size, page_size=1, dtype=torch.float32, head_num=HEADS, head_dim=HEAD_DIM,
                                     layer_num=LAYERS, device="cpu", enable_memory_saver=False)
        self.alloc = TokenToKVPoolAllocator(size=size, dtype=torch.float32, device="cpu", kvcache=self.pool,
                                            need_sort=False)
        self.tree = RadixCache(CacheInitParams(disable=True, req_to_token_pool=self.rtp,
                                               token_to_kv_pool_allocator=self.alloc, page_size=1))
        self.layers = [RadixAttention(HEADS, HEAD_DIM, HEAD_DIM**-0.5, HEADS, layer_id=i) for i in range(LAYERS)]
        self.runner = SimpleNamespace(
            device="cpu", is_draft_worker=False, lora_manager=None, prefill_attention_backend_str="torch_native",
            decode_attention_backend_str="torch_native",
            model_config=SimpleNamespace(model_is_mrope=False, is_encoder_decoder=False,
                                         requires_mm_token_modalities=False),
            req_to_token_pool=self.rtp, token_to_kv_pool=self.pool, server_args=self.server_args,
            ngram_embedding_manager=SimpleNamespace(enabled=False),
            kv_index_translator=KVIndexTranslator(req_to_token=self.rtp.req_to_token,
                                                  token_to_kv_pool_allocator=self.alloc, token_to_kv_pool=self.pool,
                                                  page_size=1, device="cpu"))
        self.attention = TorchNativeAttnBackend(self.runner)
        self.generator = torch.Generator().manual_seed(seed)
        self.tracks: dict[str, Track] = {}
        self.outputs: list[torch.Tensor] = []  # per layer, the last forward's attention output

    # ------------------------------------------------------------------ requests
    def request(self, rid: str, prompt: list[int], schedule: EvictionSchedule | None) -> Req:
        params = SamplingParams(max_new_tokens=4096, custom_params=request_options(rid, schedule))
        req = Req(rid, "", list(prompt), params)
        self.tracks[rid] = Track(req)
        return req

    def batch(self, reqs: list[Req]) -> ScheduleBatch:
        return ScheduleBatch(reqs=reqs, req_to_token_pool=self.rtp, token_to_kv_pool_allocator=self.alloc,
                             tree_cache=self.tree, device="cpu", spec_algorithm=SpeculativeAlgorithm.NONE,
                             model_config=SimpleNamespace(is_encoder_decoder=False, vocab_size=1000))

    def prefill(self, reqs: list[Req]) -> ScheduleBatch:
        """Prefill ``reqs`` like ``prepare_for_extend`` + a forward: rows and slots allocated, KV written through
        the attention backend; each request gets its first output token. Returns the running decode batch."""
        self.rtp.alloc(reqs)
        batch = self.batch(reqs)
        lens = [len(r.origin_input_ids) for r in reqs]
        locs = self.alloc.alloc(sum(lens))
        offset = 0
        for req, n in zip(reqs, lens):
            self.rtp.write((req.kv.req_pool_idx, slice(0, n)), locs[offset : offset + n].to(torch.int32))
            req.kv.kv_allocated_len = req.kv.kv_committed_len = n
            offset += n
        batch.req_pool_indices = torch.tensor([r.kv.req_pool_idx for r in reqs], dtype=torch.int64)
        batch.req_pool_indices_cpu = batch.req_pool_indices.clone()
        batch.seq_lens = torch.tensor(lens, dtype=torch.int64)
        batch.seq_lens_cpu = batch.seq_lens.clone()
        batch.orig_seq_lens = batch.seq_lens.to(torch.int32)
        batch.out_cache_loc = locs
        batch.input_ids = torch.tensor([t for r in reqs for t in r.origin_input_ids], dtype=torch.int64)
        batch.forward_mode = ForwardMode.EXTEND
        batch.prefix_lens = [0] * len(reqs)
        batch.extend_lens = lens
        batch.extend_num_tokens = sum(lens)
        batch.extend_logprob_start_lens = lens
        # no sampler here (tokens are chosen below): only what prepare_for_decode / filter_batch touch
        batch.sampling_info = SimpleNamespace(penalizer_orchestrator=SimpleNamespace(is_required=False),
                                              grammars=None, filter_batch=lambda *args: None)
        self._forward(batch)
        batch.forward_mode = ForwardMode.DECODE
        return batch

    def decode(self, batch: ScheduleBatch) -> ForwardBatch:
        """One decode step: SGLang's ``prepare_for_decode`` (compaction runs in its BEFORE hook), then a forward."""
        batch.input_ids = torch.tensor([r.output_ids[-1] for r in batch.reqs], dtype=torch.int64)
        batch.prepare_for_decode()
        return self._forward(batch)

    def _forward(self, batch: ScheduleBatch) -> ForwardBatch:
        fb = ForwardBatch.init_new(batch, self.runner, return_hidden_states_before_norm=False)
        n = int(fb.input_ids.numel())
        rows = []
        for req, count in zip(batch.reqs, batch.extend_lens if fb.forward_mode.is_extend() else [1] * len(batch.reqs)):
            track = self.tracks[req.rid]
            for _ in range(count):
                pos = len(track.tokens)
                draw = [torch.randn(3, HEADS, HEAD_DIM, generator=self.generator) for _ in range(LAYERS)]
                track.tokens.append(Token(pos, [d[0] for d in draw], [d[1] for d in draw], [d[2] for d in draw]))
                rows.append(track.tokens[-1])
        assert len(rows) == n
        self.attention.init_forward_metadata(fb)
        self.outputs = []
        with forward_context(ForwardContext(attn_backend=self.attention)):
            for layer in self.layers:
                i = layer.layer_id
                positions = fb.positions.long()
                q = rope(torch.stack([t.q[i] for t in rows]), positions).reshape(n, -1)
                k = rope(torch.stack([t.k[i] for t in rows]), positions).reshape(n, -1)
                v = torch.stack([t.v[i] for t in rows]).reshape(n, -1)
                self.outputs.append(layer(q, k, v, fb).reshape(n, HEADS, HEAD_DIM))
        runtime = plugin.runtime()
        if runtime is not None:  # where LogitsProcessor.forward would run: hidden states of every input row
            runtime.on_hidden(torch.zeros(n, 4), fb.input_ids)
        for req in batch.reqs:  # the sampled token (process_batch_result)
            req.output_ids.append(5 + len(req.output_ids) % 40)
        return fb

    def release(self, req: Req) -> None:
        """What the scheduler does when a request finishes or is aborted."""
        release_kv_cache(req, self.tree, checkpoint=False)
