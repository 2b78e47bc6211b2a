"""Content fingerprints of what a run ran: the code, the model weights, the predictor.

Runs are keyed on them (the model's and predictor's go into the config hash; the code's is checked when a run
directory is reused or resumed), so a result made by other code or other weights is never silently reused.
Hashing a multi-GB checkpoint takes a while, so file hashes are cached by (path, size, mtime).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from backends.hf.loading import resolve

CACHE = Path.home() / ".cache" / "dynts-bench" / "fingerprints.json"
_ROOT = Path(__file__).resolve().parents[2]
#: the packages whose source decides what a run produces
CODE_PACKAGES = ("zoo", "backends", "harness")
_CHUNK = 1 << 20


def _load_cache() -> dict[str, str]:
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


def file_sha256(path: Path) -> str:
    """The file's sha256, from the cache when its size and mtime are unchanged."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    cache = _load_cache()
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    cache[key] = digest.hexdigest()
    try:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = CACHE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(CACHE)
    except OSError:
        pass  # a read-only home only costs re-hashing
    return cache[key]


def directory_sha256(directory: Path, suffixes: tuple[str, ...] = (".json", ".safetensors", ".bin", ".model",
                                                                   ".txt", ".jinja")) -> str:
    """One hash over the directory's model files (names and contents), in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in suffixes
                       and p.name not in ("training.json", "README.md")):
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def model_fingerprint(spec: str) -> str:
    """``sha256:<hex>`` of a local model's files, or ``hub:<id>`` for a model only the hub holds."""
    source = resolve(spec)
    path = Path(source.path)
    if source.kind == "hub":
        return f"hub:{spec}"
    if path.is_dir():
        return "sha256:" + directory_sha256(path)[:16]
    return "sha256:" + file_sha256(path)[:16]


def predictor_fingerprint(directory: str | Path) -> str:
    return "sha256:" + directory_sha256(Path(directory))[:16]


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of every Python source file and task YAML of the packages that produce results."""
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((_ROOT / package).rglob("*")):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(_ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
