"""A run's full configuration: what it ran, hashed so that a rerun of the same config resumes its directory."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backends.base import SamplingParams
from zoo.schedule import EvictionSchedule


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class RunConfig:
    backend: str
    model: str
    policy: str
    policy_options: dict[str, Any]
    schedule: EvictionSchedule | None  # None: the policy never evicts
    sampling: SamplingParams
    prompts_name: str
    prompts_sha256: str
    limit: int | None = None
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 8
    chat: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    #: content fingerprints of the model weights and any policy artefact (predictor): part of the hash
    artefacts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schedule"] = self.schedule.to_dict() if self.schedule else None
        d["sampling"] = self.sampling.to_dict()
        return d
