"""The DynTS importance predictor: a small MLP head on the model's final hidden state.

Stored as a directory with ``model.safetensors`` (weights) and ``predictor.json`` (base model, hidden size,
layer sizes, how the labels were made, and what the output means: ``target``). Loading refuses a predictor made
for another model: its scores would be noise that still looks like a ranking.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from zoo.base import ModelInfo, PolicyError

WEIGHTS = "model.safetensors"
CONFIG = "predictor.json"
#: what a head's output means: ``importance`` -- a score, higher keeps (the paper's; every head before targets);
#: ``lifetime`` -- how many tokens after its own the token stays needed, under the head's label transform
TARGETS = ("importance", "lifetime")
#: label transforms a lifetime head may use: each gives back log(1 + tokens)
LIFETIME_TRANSFORMS = ("log1p", "none")


@dataclass
class PredictorConfig:
    base_model: str
    hidden_size: int
    layer_sizes: list[int]  # widths of the hidden layers, e.g. [2h, h/2]; the output is 1
    label_method: str = "answer_attention"
    label_transform: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)
    #: the DynTS ranking options this head was validated with (``pool_next``, ``recency``); empty: the paper's
    selection: dict[str, Any] = field(default_factory=dict)
    target: str = "importance"

    def check_target(self) -> None:
        """Refuse a target this code cannot read, or a lifetime head whose output cannot be turned into tokens."""
        if self.target not in TARGETS:
            raise PolicyError(f"predictor target {self.target!r} is unknown: choose from {', '.join(TARGETS)}")
        if self.target == "lifetime" and self.label_transform not in LIFETIME_TRANSFORMS:
            raise PolicyError(f"a lifetime predictor needs a label transform it can undo "
                              f"({', '.join(LIFETIME_TRANSFORMS)}), not {self.label_transform!r}: retrain it with "
                              "--transform log1p")

    def log_lifetime(self, output: torch.Tensor) -> torch.Tensor:
        """A lifetime head's output as log(1 + lifetime in tokens)."""
        return output if self.label_transform == "log1p" else output.clamp(min=0).log1p()

    @staticmethod
    def default_sizes(hidden_size: int) -> list[int]:
        return [2 * hidden_size, max(1, hidden_size // 2)]


class ImportancePredictor(nn.Module):
    """Bias-free MLP ``hidden -> layer_sizes... -> 1`` with Softplus between layers and at the end (as in
    the paper), so that scores are positive."""

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.hidden_size, *config.layer_sizes, 1]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers.append(nn.Linear(a, b, bias=False))
            layers.append(nn.Softplus())
        self.mlp = nn.Sequential(*layers)
        # the Linear layers, held once: slicing a Sequential builds a new module on every call
        self._linears: tuple[nn.Linear, ...] = tuple(layers[::2])  # type: ignore[assignment]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., hidden]`` -> ``[...]`` importance scores. The layers' functions are called directly (each
        Linear is followed by a default Softplus): on every decode step the modules' own call overhead would be
        most of the cost of so small a head."""
        x = hidden.to(self._linears[0].weight.dtype)
        for linear in self._linears:
            x = F.softplus(F.linear(x, linear.weight))
        return x.squeeze(-1)

    @torch.no_grad()
    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """``forward`` without autograd and without ``Module.__call__``: DynTS's per-step path."""
        return self.forward(hidden)

    def save(self, directory: Path) -> None:
        """Write weights and config next to each other, then move each into place: an interrupted save leaves
        the previous predictor (or nothing), never a config beside half the weights."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        staged = {WEIGHTS: directory / f".{WEIGHTS}.partial", CONFIG: directory / f".{CONFIG}.partial"}
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(staged[WEIGHTS]))
        staged[CONFIG].write_text(json.dumps(asdict(self.config), indent=2, sort_keys=True))
        for name, path in staged.items():
            path.replace(directory / name)

    @classmethod
    def load(cls, directory: str | Path) -> ImportancePredictor:
        directory = Path(directory).expanduser()
        if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
            raise PolicyError(
                f"no DynTS predictor at {directory}: expected {CONFIG} and {WEIGHTS} there "
                "(train one with the predictor pipeline, or point --policy-arg predictor=DIR at one)"
            )
        try:
            config = PredictorConfig(**json.loads((directory / CONFIG).read_text()))
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"unreadable {directory / CONFIG}: {exc}") from None
        try:
            config.check_target()
        except PolicyError as exc:
            raise PolicyError(f"{directory / CONFIG}: {exc}") from None
        model = cls(config)
        try:
            model.load_state_dict(load_file(str(directory / WEIGHTS)))
        except (RuntimeError, OSError, SafetensorError) as exc:
            raise PolicyError(f"{directory / WEIGHTS} is unreadable or does not match {CONFIG}: "
                              f"{str(exc).splitlines()[0]}") from None
        return model.eval()

    def check_model(self, model: ModelInfo) -> None:
        """Refuse a model other than the one this predictor was trained on."""
        cfg = self.config
        if cfg.hidden_size != model.hidden_size:
            raise PolicyError(
                f"this DynTS predictor was trained for {cfg.base_model} (hidden size {cfg.hidden_size}), but the "
                f"model has hidden size {model.hidden_size}: use a predictor trained for {model.model_id}"
            )
        names = {_short(model.model_id), _short(model.name_or_path)}
        if _short(cfg.base_model) not in names:
            raise PolicyError(
                f"this DynTS predictor was trained for {cfg.base_model}, not {model.model_id}: "
                "use a predictor trained for this model"
            )


def _short(name: str) -> str:
    """Compare model names by their last path component: a hub id and its local snapshot match."""
    return Path(name.rstrip("/")).name.lower()
