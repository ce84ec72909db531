"""Multi-view test run: checkpoints + a list file -> per-view logits, fused
scores, metrics and the files a person reads afterwards.

``run_test`` evaluates each checkpoint with :func:`tcpnet.engine.evaluate.evaluate` (exact under
torchrun: every rank evaluates its shard and the results are gathered), fuses the views of each
model (max-prob by default, the authors' rule), then averages ``weight * fused`` over models
(as the authors' ensemble script does). Rank 0 writes into ``output_dir``:

* ``metrics.json``: top-1/top-5, mean class accuracy, per-class accuracy (or mAP for multi-label
  data), the settings, and each model's own numbers for an ensemble;
* ``scores.npz``: ``view_logits`` (N, V, K) -- (M, N, V, K) for an ensemble of M models, with
  ``weights`` (M,) --, ``scores`` (N, K) fused, ``targets``, ``paths``, ``class_names``, ``fusion``,
  so any fusion can be redone offline with :func:`fuse_scores`;
* ``confusion_matrix.csv`` / ``confusion_matrix.png`` (single-label data).
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from tcpnet.config import Config, parse_views, resolve_fusion
from tcpnet.data.build import IndexedSubset, build_test_dataset, check_data_config, load_class_names, read_list
from tcpnet.engine.distributed import cleanup_distributed, init_distributed, shard_indices
from tcpnet.engine.evaluate import FUSIONS, evaluate, fuse_views
from tcpnet.engine.logs import jsonable
from tcpnet.engine.metrics import classification_metrics, per_class_accuracy
from tcpnet.utils.malloc import retain_freed_memory

logger = logging.getLogger(__name__)

__all__ = ["TestResult", "run_test", "fuse_scores", "load_models", "resolve_checkpoints",
           "write_confusion_matrix"]


@dataclass
class TestResult:
    """What a test run produced (identical on every rank)."""

    metrics: Dict[str, Any]
    scores: torch.Tensor               # (N, K) ensemble scores
    view_logits: List[torch.Tensor]    # one (N, V, K) tensor per model
    targets: torch.Tensor              # (N,) or (N, K) multi-hot
    paths: List[str]
    class_names: Optional[List[str]]
    output_dir: Optional[Path] = None
    files: Dict[str, Path] = field(default_factory=dict)


def fuse_scores(view_logits: Union[np.ndarray, torch.Tensor], fusion: str = "max-prob",
                weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Fuse saved logits: (N, V, K) of one model, or (M, N, V, K) of M models with ``weights``
    (default 1 each): ``mean_m(weights[m] * fuse_views(view_logits[m], fusion))`` -> (N, K)."""
    x = torch.as_tensor(np.asarray(view_logits) if not isinstance(view_logits, torch.Tensor) else view_logits)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"view_logits: expected (N, V, K) or (M, N, V, K), got {tuple(x.shape)}")
    w = [1.0] * x.shape[0] if weights is None else [float(v) for v in np.asarray(weights).reshape(-1)]
    if len(w) != x.shape[0]:
        raise ValueError(f"weights: expected {x.shape[0]} values (one per model), got {len(w)}")
    return torch.stack([wi * fuse_views(xi, fusion) for wi, xi in zip(w, x)]).mean(0)


def resolve_checkpoints(cfg: Config, checkpoints: Union[str, Sequence[str], None]) -> List[str]:
    """Comma-separated / listed paths; else ``cfg.test.checkpoint``; else ``<output_dir>/best.pt``."""
    if isinstance(checkpoints, str):
        checkpoints = [c for c in checkpoints.split(",") if c.strip()]
    if not checkpoints and cfg.test.checkpoint:
        checkpoints = [c for c in cfg.test.checkpoint.split(",") if c.strip()]
    if not checkpoints:
        best = Path(cfg.output_dir) / "best.pt"
        if not best.is_file():
            raise FileNotFoundError(f"no checkpoint given (--checkpoint / test.checkpoint) and {best} does not exist")
        checkpoints = [str(best)]
    paths = [c.strip() for c in checkpoints]
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: checkpoint not found")
    return paths


def load_models(paths: Sequence[str], device: torch.device) -> List[torch.nn.Module]:
    """Rebuild every checkpoint (model file, training checkpoint or .safetensors) in eval mode."""
    from tcpnet.checkpoints import build_model_from_checkpoint

    models = [build_model_from_checkpoint(p).to(device).eval() for p in paths]
    k = {int(m.num_classes) for m in models}
    if len(k) > 1:
        raise ValueError(f"ensemble: the checkpoints have different numbers of classes "
                         f"{[int(m.num_classes) for m in models]} ({', '.join(paths)})")
    return models


def _class_names(cfg: Config, models: Sequence[torch.nn.Module], num_classes: int) -> Optional[List[str]]:
    names = load_class_names(cfg.data) or getattr(models[0], "class_names", None)
    if names is not None and len(names) != num_classes:
        source = cfg.data.class_names or "the checkpoint"
        raise ValueError(f"{source}: {len(names)} class names but the model has {num_classes} classes")
    return list(names) if names is not None else None


def _test_subset(cfg: Config) -> str:
    """``test`` when data.test_list is set, else ``val``."""
    if not (cfg.data.test_list or cfg.data.val_list):
        raise ValueError("no test list: set data.test_list (or data.val_list)")
    return "test" if cfg.data.test_list else "val"


def write_confusion_matrix(cm: np.ndarray, class_names: Optional[Sequence[str]], csv_path: Path,
                           png_path: Optional[Path] = None) -> None:
    """CSV (header row + one row per true class, columns = predicted class) and a PNG heat map."""
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *names])
        for name, row in zip(names, cm):
            w.writerow([name, *[int(c) for c in row]])
    if png_path is None:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = min(4 + 0.25 * k, 40)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, np.maximum(rows, 1), dtype=np.float64)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 60:
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def run_test(cfg: Config, checkpoints: Union[str, Sequence[str], None] = None,
             weights: Optional[Sequence[float]] = None, views: Optional[str] = None,
             fusion: Optional[str] = None, output_dir: Union[str, Path, None] = None,
             amp: Optional[str] = None, progress: bool = True) -> TestResult:
    """Test ``checkpoints`` (an ensemble when several) on ``cfg.data.test_list`` (else val_list)
    with ``views`` crops x clips and ``fusion``; write the result files on rank 0 (see module doc).

    ``views``/``fusion`` default to ``cfg.test``; ``output_dir`` to ``<cfg.output_dir>/test_<views>``.
    """
    check_data_config(cfg.data)
    views = views or cfg.test.views
    fusion = fusion or cfg.test.fusion
    crops, clips = parse_views(views)
    if fusion not in FUSIONS:
        raise ValueError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
    fusion = resolve_fusion(fusion, cfg.data.multi_label)  # auto: softmax, or sigmoids for multi-label data
    paths = resolve_checkpoints(cfg, checkpoints)
    if weights is None:
        weights = [1.0] * len(paths)
    weights = [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"--weights: {len(weights)} weight(s) for {len(paths)} checkpoint(s)")
    subset = _test_subset(cfg)
    list_path = getattr(cfg.data, f"{subset}_list")
    if not Path(list_path).exists():
        raise FileNotFoundError(f"{list_path} (data.{subset}_list): test list not found")

    if cfg.retain_freed_memory:  # activations re-used in place instead of page-faulted in every step
        retain_freed_memory()
    info = init_distributed(cfg.device)
    owns_group = info.world_size > 1
    try:
        device = info.device
        models = load_models(paths, device)
        num_classes = int(models[0].num_classes)
        class_names = _class_names(cfg, models, num_classes)
        records = read_list(cfg.data, subset, class_names=class_names, num_classes=num_classes,
                            classes_from=f"from the checkpoint {paths[0]}")
        per_model, all_logits, targets = [], [], None
        rec_paths: Optional[List[str]] = None
        for path, model, weight in zip(paths, models, weights):
            dataset = build_test_dataset(cfg.data, records, model.input_config, views=(crops, clips),
                                         num_classes=num_classes)
            rec_paths = [r.path for r in dataset.records]
            shard = IndexedSubset(dataset, shard_indices(len(dataset), info.rank, info.world_size))
            loader = DataLoader(shard, batch_size=cfg.test.batch_size, num_workers=cfg.data.num_workers,
                                shuffle=False, pin_memory=device.type == "cuda")
            if info.is_main:
                logger.info("testing %s (%s) on %d videos of %s: %s views (%d crops x %d clips), %s fusion",
                            path, model.model_name, len(dataset), list_path, views, crops, clips, fusion)
            res = evaluate(model, loader, device=device, fusion=fusion, amp=amp, num_classes=num_classes,
                           progress=progress)
            if targets is not None and not torch.equal(targets, res.targets):
                raise RuntimeError("ensemble: models were evaluated on different targets")
            targets = res.targets
            all_logits.append(res.view_logits)
            m = {k: v for k, v in res.metrics.items() if k != "confusion_matrix"}
            per_model.append({"checkpoint": path, "model_name": model.model_name, "weight": weight, **m})

        scores = fuse_scores(torch.stack(all_logits), fusion, weights)
        metrics = classification_metrics(scores, targets, num_classes)
        cm = metrics.pop("confusion_matrix", None)
        summary: Dict[str, Any] = {
            "checkpoints": paths, "weights": weights, "test_list": list_path, "views": f"{crops}x{clips}",
            "num_views": crops * clips, "fusion": fusion, "num_classes": num_classes, **metrics,
        }
        if len(paths) == 1:
            summary["loss"] = per_model[0].get("loss")
        else:
            summary["per_model"] = per_model
        if cm is not None:
            acc = per_class_accuracy(cm)
            names = class_names or [str(i) for i in range(num_classes)]
            summary["per_class_accuracy"] = {n: 100.0 * float(a) for n, a in zip(names, acc)}
        summary = jsonable(summary)

        result = TestResult(metrics=summary, scores=scores, view_logits=all_logits, targets=targets,
                            paths=rec_paths or [], class_names=class_names)
        if info.is_main:
            out = Path(output_dir) if output_dir is not None else Path(cfg.output_dir) / f"test_{crops}x{clips}"
            out.mkdir(parents=True, exist_ok=True)
            result.output_dir = out
            stacked = all_logits[0] if len(all_logits) == 1 else torch.stack(all_logits)
            np.savez_compressed(
                out / "scores.npz", view_logits=stacked.numpy(), scores=scores.numpy(),
                targets=targets.numpy(), paths=np.array(result.paths), weights=np.array(weights),
                fusion=np.array(fusion), views=np.array(f"{crops}x{clips}"),
                class_names=np.array(class_names if class_names is not None else [], dtype=str))
            result.files["scores"] = out / "scores.npz"
            (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
            result.files["metrics"] = out / "metrics.json"
            if cm is not None:
                write_confusion_matrix(cm, class_names, out / "confusion_matrix.csv", out / "confusion_matrix.png")
                result.files["confusion_csv"] = out / "confusion_matrix.csv"
                result.files["confusion_png"] = out / "confusion_matrix.png"
            if "top1" in summary:
                logger.info("%d videos: top-1 %.2f  top-5 %.2f  mean class acc %.2f (%s, %s)", summary["num_videos"],
                            summary["top1"], summary["top5"], summary["mean_class_acc"] or float("nan"),
                            summary["views"], fusion)
            else:
                logger.info("%d videos: mAP %.2f (%s, %s)", summary["num_videos"], summary["mAP"] or float("nan"),
                            summary["views"], fusion)
            logger.info("wrote %s", ", ".join(str(p) for p in result.files.values()))
        return result
    finally:
        if owns_group:
            cleanup_distributed()
