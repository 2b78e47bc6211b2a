"""``dynts-bench train-predictor``: fit the importance head on labelled trace stores."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from harness.cli.app import console
from harness.cli.progress import progress_for
from harness.predictor_pipeline.fit import PRESETS, FitConfig, fit
from harness.predictor_pipeline.labels import methods_help
from harness.predictor_pipeline.traces import TraceStore, TraceStoreError


def train_predictor(
    store_dir: list[Path] = typer.Argument(..., help="Labelled trace store(s); several (e.g. on-policy "
                                           "rounds) are trained on together."),
    out: Path = typer.Option(..., help="Predictor directory to write."),
    label_method: str = typer.Option("attention", help=f"Labels made by `dynts-bench label`: {methods_help()}."),
    transform: Optional[str] = typer.Option(None, help="none | power ((x^0.3/0.3)*10) | scale (x*1e4) | rank | "
                                            "log1p (log(1+x)); default: log1p for a lifetime head, else power."),
    target: Optional[str] = typer.Option(None, help="What the head predicts: importance (a score: higher keeps) | "
                                         "lifetime (how many tokens the token stays needed; DynTS evicts the "
                                         "token whose predicted need ran out first). Default: lifetime for "
                                         "--label-method lifetime, else importance."),
    pool: str = typer.Option("none", help="Spread labels to neighbours first: none | prev (a token also gets "
                             "its successor's label) | max3 (max over a 3-token kernel, as SnapKV pools)."),
    layer_sizes: Optional[str] = typer.Option(None, help="Hidden widths, e.g. 256,64 (default 2h,h/2)."),
    preset: Optional[str] = typer.Option(None, help="'paper': 8192,2048 (the reference head for 7-8B)."),
    epochs: int = typer.Option(15),
    lr: float = typer.Option(5e-4),
    rank_weight: float = typer.Option(1.0, help="Weight of the pairwise ranking loss (0 = MSE only)."),
    mse_weight: float = typer.Option(1.0, help="Weight of the MSE loss (0 = ranking only)."),
    val_fraction: float = typer.Option(0.1),
    seed: int = typer.Option(0),
    include_incorrect: bool = typer.Option(False, help="Train on incorrect traces too (default: correct only)."),
    pool_next: int = typer.Option(0, min=0, help="DynTS ranking stored with the head: a token's score is at "
                                  "least its next N tokens' (0: the paper's)."),
    recency: float = typer.Option(0.0, min=0.0, help="DynTS ranking stored with the head: add R x the median "
                                  "score (a lifetime head: log(1 + cached span)) x age rank, so unflagged tokens "
                                  "go oldest first (0: the paper's)."),
) -> None:
    """Train the importance head on the frozen model's hidden states; early stopping on held-out tau."""
    sizes = hidden_widths(layer_sizes, preset)
    if rank_weight < 0 or mse_weight < 0 or rank_weight + mse_weight == 0:
        raise TraceStoreError(f"--rank-weight {rank_weight} and --mse-weight {mse_weight}: both must be >= 0 "
                              "and one > 0")
    target = target or ("lifetime" if label_method == "lifetime" else "importance")
    transform = transform or ("log1p" if target == "lifetime" else "power")
    cfg = FitConfig(label_method=label_method, transform=transform, pool=pool, layer_sizes=sizes, target=target,
                    epochs=epochs, lr=lr, rank_weight=rank_weight, mse_weight=mse_weight,
                    val_fraction=val_fraction, seed=seed, correct_only=not include_incorrect,
                    selection={k: v for k, v in (("pool_next", pool_next), ("recency", recency)) if v})
    with progress_for(console, "epochs") as progress:
        bar = progress.add_task("epochs", total=epochs)

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            progress.update(bar, completed=epoch)
            progress.console.log(f"epoch {epoch}: loss {row['train_loss']:.4f}, held-out tau "
                                 f"{row['kendall_tau']:.3f}, top-20% recall@20 {row['top20_recall@20']:.3f}")

        report = fit([TraceStore(d) for d in store_dir], out, cfg, on_epoch)
    console.print(f"predictor -> {out} (best epoch {report['best_epoch']}, held-out tau "
                  f"{report['validation']['kendall_tau']:.3f})")


def hidden_widths(layer_sizes: Optional[str], preset: Optional[str]) -> list[int] | None:
    """``--layer-sizes 256,64`` or ``--preset paper`` as widths (the preset wins); None: the default."""
    if preset is not None and preset not in PRESETS:
        raise TraceStoreError(f"unknown --preset {preset!r}: choose from {', '.join(PRESETS)}")
    try:
        sizes = [int(x) for x in layer_sizes.split(",")] if layer_sizes else None
    except ValueError:
        raise TraceStoreError(f"--layer-sizes {layer_sizes!r}: give widths such as 256,64") from None
    return PRESETS[preset] if preset else sizes
