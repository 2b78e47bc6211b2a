"""The sglang backend where SGLang is absent (the core environment): one line naming what to install and where,
never a traceback; and its engine-neutral parts (zero-copy remaps, engine-argument refusals), which import no
SGLang. The real-class tests live in ``tests/sglang/`` (SGLang's own environment)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from typer.testing import CliRunner

from backends import BACKENDS
from backends.base import BackendError
from backends.paged import PlanError
from backends.paged.remap import apply_remap, plan_remap
from backends.sglang.checks import PINNED_SGLANG, REQUIRED, check_version, refusal
from harness.cli import app
from zoo import build_policy

no_sglang = pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="SGLang is installed here")


@no_sglang
def test_run_with_sglang_absent_is_one_line_naming_the_extra_and_the_platform(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "What is 2 + 3?"}\n')
    result = CliRunner().invoke(app, ["run", "--backend", "sglang", "--policy", "dynts", "--model", "tiny-reasoner",
                                      "--prompts", str(prompts), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    text = " ".join(result.output.split())
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "dynts-bench[sglang]" in text and "NVIDIA GPU" in text and "backends/sglang/install_cpu_env.sh" in text
    assert "Traceback" not in result.output


@no_sglang
def test_backends_listing_says_how_to_get_sglang():
    assert "install_cpu_env.sh" in BACKENDS["sglang"].available()


def test_policies_the_adapter_cannot_serve_are_refused_before_loading():
    caps = BACKENDS["sglang"].capabilities
    assert caps is not None
    assert caps.refusal("sglang", build_policy("dynts", predictor=None)) is None
    assert caps.refusal("sglang", build_policy("snapkv")) is None
    reason = caps.refusal("sglang", build_policy("h2o"))
    assert reason is not None and "'attention'" in reason and "\n" not in reason
    assert "--protocol replay" in caps.refusal("sglang", None, "replay")


def test_other_sglang_releases_are_refused_with_one_line():
    check_version(PINNED_SGLANG)
    with pytest.raises(BackendError, match=f"verified against SGLang {PINNED_SGLANG}, found 0.5.14"):
        check_version("0.5.14")


@pytest.mark.parametrize("key,value,needle", [
    ("disable_radix_cache", False, "--disable-radix-cache"),
    ("disable_overlap_schedule", False, "--disable-overlap-schedule"),
    ("page_size", 16, "--page-size 1"),
    ("speculative_algorithm", "EAGLE", "speculative decoding"),
    ("tp_size", 2, "tp_size=2"),
    ("kv_cache_dtype", "fp8_e5m2", "quantised KV"),
    ("enable_mixed_chunk", True, "--enable-mixed-chunk"),
])
def test_engine_arguments_the_adapter_needs_are_demanded_one_line_each(key, value, needle):
    assert refusal(dict(REQUIRED)) is None
    reason = refusal({**REQUIRED, key: value})
    assert reason is not None and needle in reason and "\n" not in reason


def test_cuda_graphs_are_refused_on_gpu_only():
    assert "--disable-cuda-graph" in refusal({**REQUIRED, "device": "cuda", "attention_backend": "fa3"})
    assert refusal({**REQUIRED, "device": "cuda", "disable_cuda_graph": True, "attention_backend": "fa3"}) is None
    assert refusal({**REQUIRED, "device": "cpu"}) is None


CUDA = {**REQUIRED, "device": "cuda", "disable_cuda_graph": True}


@pytest.mark.parametrize("backends,accepted", [
    ({"attention_backend": "fa3"}, True),
    ({"attention_backend": "flashinfer"}, True),
    ({"attention_backend": "triton"}, True),
    ({}, False),  # SGLang's own choice could be one whose pages are larger than one token
    ({"attention_backend": "trtllm_mha"}, False),  # pages of 16-64
    ({"attention_backend": "fa4"}, False),  # pages of 128
    ({"attention_backend": "flashmla"}, False),
    ({"attention_backend": "fa3", "decode_attention_backend": "trtllm_mha"}, False),
    ({"attention_backend": "triton", "prefill_attention_backend": "flashinfer"}, True),
])
def test_cuda_attention_backends_outside_fa3_flashinfer_triton_are_refused(backends, accepted):
    reason = refusal({**CUDA, **backends})
    assert (reason is None) == accepted
    if reason is not None:
        assert "fa3, flashinfer, triton" in reason and "\n" not in reason


def test_the_hnd_pool_layout_is_refused_on_cuda(monkeypatch):
    args = {**CUDA, "attention_backend": "flashinfer"}
    monkeypatch.setenv("SGLANG_USE_HND_KVCACHE", "1")
    assert "SGLANG_USE_HND_KVCACHE" in refusal(args)
    monkeypatch.setenv("SGLANG_USE_HND_KVCACHE", "0")
    assert refusal(args) is None


#: may a policy run with prefill (piecewise) CUDA graphs or torch.compile on? its queries come from a hook on
#: RadixAttention.forward, which a replayed or compiled forward may skip
PREFILL_GRAPHS_ALLOWED = {"full": True, "window": True, "streamingllm": True, "sepllm": True, "random": True,
                          "oracle": True, "dynts": True, "snapkv": False, "tova": False, "rkv": False}


@pytest.mark.parametrize("name", PREFILL_GRAPHS_ALLOWED)
@pytest.mark.parametrize("mode", ["prefill graphs", "torch.compile"])
def test_query_capturing_policies_need_prefill_graphs_and_torch_compile_off_on_cuda(name, mode):
    from backends.sglang.checks import policy_refusal

    needs = build_policy(name).needs
    off = {**CUDA, "attention_backend": "fa3", "disable_prefill_cuda_graph": True, "enable_torch_compile": False}
    switch = {"disable_prefill_cuda_graph": False} if mode == "prefill graphs" else {"enable_torch_compile": True}
    on = {**off, **switch}
    assert policy_refusal(off, needs) is None
    assert (policy_refusal(on, needs) is None) == PREFILL_GRAPHS_ALLOWED[name]
    assert policy_refusal({**on, "device": "cpu"}, needs) is None


def test_the_backends_cuda_arguments_pass_every_check():
    from backends.sglang.backend import engine_args
    from backends.sglang.checks import policy_refusal

    args = engine_args("/m", "cuda", "bfloat16", 8, 1024, None)
    assert refusal(args) is None and policy_refusal(args, build_policy("snapkv").needs) is None
    assert args["page_size"] == 1 and args["attention_backend"] in ("fa3", "flashinfer", "triton")


def test_remap_keeps_the_survivors_pool_slots_in_order_and_frees_exactly_the_rest():
    table = torch.zeros(3, 10, dtype=torch.int32)
    row = torch.tensor([41, 7, 19, 3, 88, 12, 5], dtype=torch.int32)  # pool slots of 7 physical tokens
    table[1, :7] = row
    remap = plan_remap("r", table[1, :7], torch.tensor([0, 2, 5, 6]))
    assert remap.kept_slots.tolist() == [41, 19, 12, 5]
    assert sorted(remap.freed_slots.tolist()) == [3, 7, 88]
    assert remap.dropped == 3
    apply_remap(table, 1, remap)
    assert table[1].tolist() == [41, 19, 12, 5, 0, 0, 0, 0, 0, 0]
    assert table[0].abs().sum() == 0 and table[2].abs().sum() == 0  # other rows untouched


def test_remap_refuses_kept_sets_no_compaction_can_honour():
    row = torch.arange(1, 6)
    with pytest.raises(PlanError, match="strictly increasing"):
        plan_remap("r", row, torch.tensor([2, 1]))
    with pytest.raises(PlanError, match=r"\[0, 5\)"):
        plan_remap("r", row, torch.tensor([0, 5]))
    assert plan_remap("r", row, torch.tensor([], dtype=torch.long)).freed_slots.tolist() == [1, 2, 3, 4, 5]


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="SGLang is not installed in this environment")
def test_sglang_backend_is_available_where_sglang_is_installed():
    assert BACKENDS["sglang"].available() is None
