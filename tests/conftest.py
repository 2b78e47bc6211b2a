"""Shared fixtures: tiny random Llama / Qwen2 models built in the test (no download), and policies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from backends.hf.backend import kv_bytes_per_token
from backends.hf.decode import ModelParts
from backends.hf.observe import register
from harness.tinyreasoner.vocab import PROGRAM_VOCABULARY, save_tokenizer
from harness.tinyreasoner.vocab import VOCAB as TASK_VOCAB
from zoo import build_policy, registry
from zoo.base import ModelInfo, Policy
from zoo.predictor import ImportancePredictor, PredictorConfig

VOCAB = 96
SEPARATOR_IDS = {5, 11, 17}  # the fake vocabulary's punctuation
ALL_POLICIES = sorted(registry())
EVICTING_POLICIES = [name for name in ALL_POLICIES if registry()[name].evicts]


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=None,
        pad_token_id=0,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    model.config._attn_implementation = register()
    return model.eval()


def parts_for(model: torch.nn.Module) -> ModelParts:
    return ModelParts(
        decoder=model.get_decoder(),
        lm_head=model.get_output_embeddings(),
        num_layers=model.config.num_hidden_layers,
        kv_bytes_per_token=kv_bytes_per_token(model.config, model.dtype),
        eos_ids=frozenset(),
        pad_id=0,
    )


def model_info(model: torch.nn.Module, model_id: str) -> ModelInfo:
    texts = ["." if i in SEPARATOR_IDS else f"w{i}" for i in range(VOCAB)]
    # the words the oracle reads (the tiny-reasoner task's), so that it runs on random models too
    texts[20], texts[21] = "step", "="
    texts[30:40] = [str(d) for d in range(10)]
    texts[40:50] = [f"r{k}" for k in range(1, 11)]
    return ModelInfo(model_id, model_id, model.config.hidden_size, model.config.num_hidden_layers, lambda: texts)


def make_policy(name: str, info: ModelInfo, predictor_dir: Path) -> Policy:
    options = {"predictor": str(predictor_dir)} if name == "dynts" else {}
    policy = build_policy(name, **options)
    policy.prepare(info)
    return policy


@pytest.fixture(params=["llama", "qwen2"])
def tiny(request, tmp_path):
    """(model, parts, info, predictor_dir) for one tiny architecture."""
    model = tiny_model(request.param)
    info = model_info(model, f"tiny-{request.param}")
    predictor = ImportancePredictor(PredictorConfig(info.model_id, info.hidden_size, [32, 16]))
    predictor.save(tmp_path / "predictor")
    return model, parts_for(model), info, tmp_path / "predictor"


@pytest.fixture(scope="session")
def random_reasoner(tmp_path_factory) -> Path:
    """A randomly initialised Llama with the tiny reasoner's tokenizer, saved as a model directory."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("random-reasoner")
    config = LlamaConfig(vocab_size=len(TASK_VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, eos_token_id=1, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(path)
    save_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def random_program_reasoner(tmp_path_factory) -> Path:
    """A randomly initialised Llama with the program task's tokenizer (``tiny-reasoner-program``'s), saved as a
    model directory: long enough positions for the task's longest trace."""
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("random-program-reasoner")
    config = LlamaConfig(vocab_size=len(PROGRAM_VOCABULARY.tokens), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=False, eos_token_id=1, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(path)
    PROGRAM_VOCABULARY.save_tokenizer(path)
    return path
