"""Placeholders for names the CPU shim does not implement: importable, but calling one says what is missing."""

from __future__ import annotations

from typing import Any


class Missing:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{self.name} is not provided by the dynts-bench SGLang CPU shim "
                                  "(backends/sglang/cpu_shim): install the real package for image models")

    def __getattr__(self, attr: str) -> Missing:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Missing(f"{self.name}.{attr}")

    def __repr__(self) -> str:
        return f"<missing {self.name}>"


def module_getattr(module: str):
    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return Missing(f"{module}.{name}")

    return __getattr__
