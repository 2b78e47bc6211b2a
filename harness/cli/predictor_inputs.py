"""What the predictor commands share: the transformers engine they read hidden states with, the predictor they
check against its model, and an optional JSON copy of their output."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from backends.hf.backend import TransformersBackend
from harness.results.rundir import atomic_write_json
from harness.runs.catalog import shipped_predictor
from zoo.base import PolicyError
from zoo.predictor import ImportancePredictor


def transformers_engine(model: str, batch_size: int = 8, device: str = "cpu") -> TransformersBackend:
    return TransformersBackend(model, device=device, batch_size=batch_size)


def write_json_if_asked(path: Optional[Path], data: Any) -> None:
    """``--json PATH`` given: the command's result there as well."""
    if path is not None:
        atomic_write_json(path, data)


def checked_predictor_path(path: Optional[Path], engine: TransformersBackend) -> Path:
    """The predictor directory to use (the given one or the model's shipped one), checked against the model."""
    location = path or shipped_predictor(engine.model_info().model_id)
    if location is None:
        raise PolicyError(f"no predictor shipped for {engine.model_info().model_id}: pass --predictor DIR")
    load_checked_predictor(location, engine)
    return Path(location)


def load_checked_predictor(path: Optional[Path], engine: TransformersBackend) -> ImportancePredictor:
    """The predictor at ``path`` (default: the model's shipped one), refused if trained for another model."""
    info = engine.model_info()
    location = path or shipped_predictor(info.model_id)
    if location is None:
        raise PolicyError(f"no predictor shipped for {info.model_id}: pass --predictor DIR")
    predictor = ImportancePredictor.load(location)
    predictor.check_model(info)
    return predictor
