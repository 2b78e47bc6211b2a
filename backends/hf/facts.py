"""What a paged-engine backend knows about a model without its engine: tokenizer, config, KV cost, the facts
policies are prepared with. Shared by the vLLM and SGLang adapters (and vLLM's server, whose engine runs in a
child process where the worker rebuilds them)."""

from __future__ import annotations

from backends.base import BackendError
from backends.hf.tokenizer import TokenizerText, eos_ids_of
from zoo.base import ModelInfo

DTYPES = ("float32", "bfloat16", "float16")
_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def model_directory(spec: str) -> tuple[str, str, str]:
    """(transformers directory an engine loads, source kind, source path) for ``--model``; GGUF files (and the
    SmolLM2 alias) are converted once, as for the transformers backend."""
    from backends.hf import loading

    source = loading.resolve(spec)
    return str(loading.transformers_dir(source)), source.kind, source.path


class ModelFacts(TokenizerText):
    """Tokenizer, config and the facts policies are prepared with, for the transformers directory an engine loads
    for ``model`` (the ``--model`` spec, as recorded; ``model_directory``)."""

    def __init__(self, model: str, dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            raise BackendError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        self.spec = model
        self.dtype = dtype
        self.path, self.source_kind, self.source_path = model_directory(model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.config = AutoConfig.from_pretrained(self.path)
        config = self.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.kv_bytes_per_token = 2 * config.num_hidden_layers * heads * head_dim * _ITEMSIZE[dtype]
        try:
            generation = GenerationConfig.from_pretrained(self.path)
        except OSError:
            generation = None
        self.eos_ids = eos_ids_of(generation, config, self.tokenizer)
        ids = self.tokenizer.encode("</think>", add_special_tokens=False)
        self.think_end_id = ids[0] if len(ids) == 1 else None

    @property
    def position_limit(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 0) or 4096)

    def model_info(self) -> ModelInfo:
        tokenizer = self.tokenizer
        return ModelInfo(
            model_id=self.spec,
            name_or_path=str(getattr(self.config, "_name_or_path", "") or self.path),
            hidden_size=self.config.hidden_size,
            num_layers=self.config.num_hidden_layers,
            token_texts=lambda: [tokenizer.decode([i]) for i in range(len(tokenizer))],
            think_end_id=self.think_end_id,
            kv_bytes_per_token=self.kv_bytes_per_token,
            eos_ids=self.eos_ids,
            vocab_size=len(tokenizer),
        )
