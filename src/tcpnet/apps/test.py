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
from tcpnet.engine.evaluate import NonFiniteLogitsError, check_fusion, evaluate, fuse_views
from tcpnet.engine.logs import jsonable
from tcpnet.engine.metrics import classification_metrics, per_class_accuracy
from tcpnet.utils.malloc import retain_freed_memory

logger = logging.getLogger(__name__)

__all__ = ["TestPlan", "TestResult", "run_test", "plan_test", "fuse_scores", "load_models", "resolve_checkpoints",
           "write_confusion_matrix", "default_class_names"]


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


def default_class_names(num_classes: int, multi_label: bool) -> List[str]:
    """Names shown for classes that have none: the class ids of multi-label (Charades) lists,
    ``c000`` ... ``c156``, else the label numbers ``0`` ... ``K-1``."""
    return [f"c{i:03d}" if multi_label else str(i) for i in range(num_classes)]


def _class_names(cfg: Config, models: Sequence[torch.nn.Module], checkpoint: str) -> Optional[List[str]]:
    """``data.class_names``, else the checkpoint's; a count that differs from the model's classes
    is an error saying what to do."""
    num_classes = int(models[0].num_classes)
    names = load_class_names(cfg.data) or getattr(models[0], "class_names", None)
    if names is not None and len(names) != num_classes:
        source = f"{cfg.data.class_names} (data.class_names)" if cfg.data.class_names else checkpoint
        raise ValueError(f"{source}: {len(names)} class names but {checkpoint} is a {num_classes}-class model; test "
                         f"it on data of its {num_classes} classes, or train a {len(names)}-class model from it "
                         f"(tcpnet train CONFIG model.pretrained={checkpoint}: every weight but the classifier "
                         "is loaded)")
    return list(names) if names is not None else None


def _test_subset(cfg: Config) -> str:
    """``test`` when data.test_list is set, else ``val``."""
    if not (cfg.data.test_list or cfg.data.val_list):
        raise ValueError("no test list: set data.test_list (or data.val_list)")
    return "test" if cfg.data.test_list else "val"


def write_confusion_matrix(cm: np.ndarray, class_names: Optional[Sequence[str]], csv_path: Path,
                           png_path: Optional[Path] = None) -> None:
    """CSV (header row + one row per true class, columns = predicted class) and, with ``png_path``,
    the report's figure (:func:`tcpnet.viz.confusion_summary`) as a PNG."""
    names = list(class_names) if class_names is not None else default_class_names(cm.shape[0], False)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *names])
        for name, row in zip(names, cm):
            w.writerow([name, *[int(c) for c in row]])
    if png_path is not None:
        from tcpnet.viz import confusion_summary, to_png

        Path(png_path).write_bytes(to_png(confusion_summary(cm, names)))


@dataclass
class TestPlan:
    """The resolved settings of a test run: what is tested on which list, and how views are fused."""

    checkpoints: List[str]
    weights: List[float]
    crops: int
    clips: int
    fusion: str                 # resolved: never "auto"
    subset: str                 # "test" or "val"
    list_path: str

    @property
    def views(self) -> str:
        return f"{self.crops}x{self.clips}"


def plan_test(cfg: Config, checkpoints: Union[str, Sequence[str], None] = None,
              weights: Optional[Sequence[float]] = None, views: Optional[str] = None,
              fusion: Optional[str] = None) -> TestPlan:
    """Check and resolve the arguments of :func:`run_test` before any model is loaded; errors
    name the option or config key."""
    check_data_config(cfg.data)
    crops, clips = parse_views(views or cfg.test.views)
    fusion = resolve_fusion(check_fusion(fusion or cfg.test.fusion), cfg.data.multi_label)
    paths = resolve_checkpoints(cfg, checkpoints)
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"--weights: {len(weights)} weight(s) for {len(paths)} checkpoint(s)")
    subset = _test_subset(cfg)
    list_path = getattr(cfg.data, f"{subset}_list")
    if not Path(list_path).exists():
        raise FileNotFoundError(f"{list_path} (data.{subset}_list): test list not found")
    return TestPlan(paths, weights, crops, clips, fusion, subset, list_path)


@dataclass
class _Evaluated:
    """Each model's per-view logits on the same videos, with its own metrics."""

    view_logits: List[torch.Tensor] = field(default_factory=list)
    per_model: List[Dict[str, Any]] = field(default_factory=list)
    targets: Optional[torch.Tensor] = None
    paths: List[str] = field(default_factory=list)


def _evaluate_models(cfg: Config, plan: TestPlan, models: Sequence[torch.nn.Module], records: Sequence[Any],
                     amp: Optional[str], progress: bool, info: Any) -> _Evaluated:
    """Evaluate every model on this rank's shard of ``records`` (gathered over ranks)."""
    num_classes = int(models[0].num_classes)
    done = _Evaluated()
    for path, model, weight in zip(plan.checkpoints, models, plan.weights):
        dataset = build_test_dataset(cfg.data, records, model.input_config, views=(plan.crops, plan.clips),
                                     num_classes=num_classes)
        done.paths = [r.path for r in dataset.records]
        shard = IndexedSubset(dataset, shard_indices(len(dataset), info.rank, info.world_size))
        loader = DataLoader(shard, batch_size=cfg.test.batch_size, num_workers=cfg.data.num_workers,
                            shuffle=False, pin_memory=info.device.type == "cuda")
        if info.is_main:
            logger.info("testing %s (%s) on %d videos of %s: %s views (%d crops x %d clips), %s fusion", path,
                        model.model_name, len(dataset), plan.list_path, plan.views, plan.crops, plan.clips,
                        plan.fusion)
        try:
            res = evaluate(model, loader, device=info.device, fusion=plan.fusion, amp=amp, num_classes=num_classes,
                           progress=progress)
        except NonFiniteLogitsError as e:
            raise NonFiniteLogitsError(f"{path}: {e}") from None
        if done.targets is not None and not torch.equal(done.targets, res.targets):
            raise RuntimeError("ensemble: models were evaluated on different targets")
        done.targets = res.targets
        done.view_logits.append(res.view_logits)
        m = {k: v for k, v in res.metrics.items() if k != "confusion_matrix"}
        done.per_model.append({"checkpoint": path, "model_name": model.model_name, "weight": weight, **m})
    return done


def _summary(plan: TestPlan, done: _Evaluated, metrics: Dict[str, Any], cm: Optional[np.ndarray],
             class_names: Optional[List[str]], num_classes: int) -> Dict[str, Any]:
    """What ``metrics.json`` holds: the settings, the ensemble's metrics, per-model or per-class numbers."""
    summary: Dict[str, Any] = {
        "checkpoints": plan.checkpoints, "weights": plan.weights, "test_list": plan.list_path, "views": plan.views,
        "num_views": plan.crops * plan.clips, "fusion": plan.fusion, "num_classes": num_classes, **metrics,
    }
    if len(plan.checkpoints) == 1:
        summary["loss"] = done.per_model[0].get("loss")
    else:
        summary["per_model"] = done.per_model
    if cm is not None:
        names = class_names or default_class_names(num_classes, False)
        summary["per_class_accuracy"] = {n: 100.0 * float(a) for n, a in zip(names, per_class_accuracy(cm))}
    return jsonable(summary)


def _write_outputs(result: TestResult, plan: TestPlan, cm: Optional[np.ndarray], out: Path) -> None:
    """Write scores.npz, metrics.json and (single-label) the confusion matrix into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    result.output_dir = out
    logits = result.view_logits
    stacked = logits[0] if len(logits) == 1 else torch.stack(logits)
    names = result.class_names if result.class_names is not None else []
    np.savez_compressed(out / "scores.npz", view_logits=stacked.numpy(), scores=result.scores.numpy(),
                        targets=result.targets.numpy(), paths=np.array(result.paths),
                        weights=np.array(plan.weights), fusion=np.array(plan.fusion), views=np.array(plan.views),
                        class_names=np.array(names, dtype=str))
    result.files["scores"] = out / "scores.npz"
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    result.files["metrics"] = out / "metrics.json"
    if cm is not None:
        write_confusion_matrix(cm, result.class_names, out / "confusion_matrix.csv", out / "confusion_matrix.png")
        result.files["confusion_csv"] = out / "confusion_matrix.csv"
        result.files["confusion_png"] = out / "confusion_matrix.png"


def _log_summary(summary: Dict[str, Any], files: Dict[str, Path]) -> None:
    if "top1" in summary:
        logger.info("%d videos: top-1 %.2f  top-5 %.2f  mean class acc %.2f (%s, %s)", summary["num_videos"],
                    summary["top1"], summary["top5"], summary["mean_class_acc"] or float("nan"),
                    summary["views"], summary["fusion"])
    else:
        logger.info("%d videos: mAP %.2f (%s, %s)", summary["num_videos"], summary["mAP"] or float("nan"),
                    summary["views"], summary["fusion"])
    logger.info("wrote %s", ", ".join(str(p) for p in files.values()))


def run_test(cfg: Config, checkpoints: Union[str, Sequence[str], None] = None,
             weights: Optional[Sequence[float]] = None, views: Optional[str] = None,
             fusion: Optional[str] = None, output_dir: Union[str, Path, None] = None,
             amp: Optional[str] = None, progress: bool = True) -> TestResult:
    """Test ``checkpoints`` (an ensemble when several) on ``cfg.data.test_list`` (else val_list)
    with ``views`` crops x clips and ``fusion``; write the result files on rank 0 (see module doc).

    ``views``/``fusion`` default to ``cfg.test``; ``output_dir`` to ``<cfg.output_dir>/test_<views>``.
    Raises :class:`~tcpnet.engine.evaluate.NonFiniteLogitsError` naming the checkpoint and the
    videos when a model outputs NaN or infinite logits.
    """
    plan = plan_test(cfg, checkpoints, weights, views, fusion)
    if cfg.retain_freed_memory:  # activations re-used in place instead of page-faulted in every step
        retain_freed_memory()
    info = init_distributed(cfg.device)
    try:
        models = load_models(plan.checkpoints, info.device)
        num_classes = int(models[0].num_classes)
        class_names = _class_names(cfg, models, plan.checkpoints[0])
        records = read_list(cfg.data, plan.subset, class_names=class_names, num_classes=num_classes,
                            classes_from=f"from the checkpoint {plan.checkpoints[0]}")
        done = _evaluate_models(cfg, plan, models, records, amp, progress, info)
        scores = fuse_scores(torch.stack(done.view_logits), plan.fusion, plan.weights)
        metrics = classification_metrics(scores, done.targets, num_classes)
        cm = metrics.pop("confusion_matrix", None)
        result = TestResult(metrics=_summary(plan, done, metrics, cm, class_names, num_classes), scores=scores,
                            view_logits=done.view_logits, targets=done.targets, paths=done.paths,
                            class_names=class_names)
        if info.is_main:
            out = Path(output_dir) if output_dir is not None else Path(cfg.output_dir) / f"test_{plan.views}"
            _write_outputs(result, plan, cm, out)
            _log_summary(result.metrics, result.files)
        return result
    finally:
        if info.world_size > 1:
            cleanup_distributed()
