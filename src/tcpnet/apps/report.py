"""A test run as one self-contained web page, ``report.html``: the metrics, the confusion matrix
with the per-class accuracy sorted, the most-confused class pairs, and the worst-predicted
videos with thumbnails of their sampled frames and their explain sheets
(:mod:`tcpnet.apps.explain`). Multi-label data shows the per-class AP instead of accuracy and
confusions, for the classes that have a positive video. Images are embedded (base64 PNG/JPEG); no network, no JavaScript.

:func:`write_test_report` turns a :class:`~tcpnet.apps.test.TestResult` into the page;
:func:`write_report` does the work from plain arrays (a :class:`ReportData`), for callers
without a test run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ReportData", "ReportOptions", "write_report", "write_test_report", "video_probabilities", "worst_videos", "confused_pairs"]

ClipLoader = Callable[[int], torch.Tensor]


def video_probabilities(scores: torch.Tensor, fusion: str, multi_label: bool) -> torch.Tensor:
    """Fused scores (N, K) -> per-video class probabilities: mean-prob and the sigmoid fusions are
    already probabilities; max-prob is renormalised to sum 1 and mean-logit goes through a softmax
    (as ``predict`` reports them)."""
    from tcpnet.config import resolve_fusion

    fusion = resolve_fusion(fusion, multi_label)
    s = scores.float()
    if fusion == "mean-logit":
        return s.sigmoid() if multi_label else s.softmax(-1)
    if fusion == "max-prob":
        return s / s.sum(-1, keepdim=True).clamp_min(1e-12)
    return s


def worst_videos(probs: torch.Tensor, targets: torch.Tensor, count: int) -> List[int]:
    """Indices of the ``count`` worst-predicted videos, worst first.

    Single-label: lowest probability of the true class. Multi-label: lowest share of the true
    labels among the video's top-|labels| classes, then lowest mean probability of the true labels
    (videos without any label are skipped). Ties: lower index first."""
    n = probs.shape[0]
    if targets.dim() == 1:
        key = probs.gather(1, targets.long().view(-1, 1)).squeeze(1).double()
        order = sorted(range(n), key=lambda i: (float(key[i]), i))
        return order[:count]
    y = targets.bool()
    rows = []
    for i in range(n):
        m = int(y[i].sum())
        if m == 0:
            continue
        top = torch.sort(probs[i], descending=True, stable=True).indices[:m]
        recall = float(y[i][top].float().mean())
        rows.append((recall, float(probs[i][y[i]].mean()), i))
    return [i for _, _, i in sorted(rows)[:count]]


def confused_pairs(cm: np.ndarray, count: int = 10) -> List[tuple]:
    """The ``count`` largest off-diagonal cells ``(true, predicted, videos)``, largest first."""
    off = np.array(cm, dtype=np.int64, copy=True)
    np.fill_diagonal(off, 0)
    cells = [(int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off))]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(i, j, n) for n, i, j in cells[:count]]


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{float(v):.2f}"


def _metrics_html(metrics: Mapping[str, Any]) -> str:
    from tcpnet.viz.html import table

    if "top1" in metrics:
        rows = [("top-1 accuracy (%)", _pct(metrics.get("top1"))), ("top-5 accuracy (%)", _pct(metrics.get("top5"))),
                ("mean class accuracy (%)", _pct(metrics.get("mean_class_acc")))]
    else:
        rows = [("mAP (%)", _pct(metrics.get("mAP")))]
    if metrics.get("loss") is not None:
        rows.append(("loss", f"{float(metrics['loss']):.4f}"))
    rows += [("videos", str(metrics.get("num_videos", "-"))), ("views", str(metrics.get("views", "-"))),
             ("fusion", str(metrics.get("fusion", "-")))]
    out = table(["metric", "value"], rows, numeric=(1,))
    per_model = metrics.get("per_model")
    if per_model:
        key = "top1" if "top1" in metrics else "mAP"
        out += table(["checkpoint", "model", "weight", key],
                     [(m["checkpoint"], m.get("model_name") or "-", f"{m['weight']:g}", _pct(m.get(key)))
                      for m in per_model], numeric=(2, 3))
    return out


def _thumbnails(frames: np.ndarray, height: int = 96) -> bytes:
    """JPEG strip of the sampled frames (T, H, W, 3), each scaled to ``height`` pixels."""
    from PIL import Image

    from tcpnet.viz import mosaic, to_jpeg

    t, h, w, _ = frames.shape
    size = (max(1, round(w * height / h)), height)
    small = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames])
    return to_jpeg(mosaic(small, gap=2))


@dataclass
class ReportData:
    """What the page shows: fused ``scores`` (N, K) and ``targets`` ((N,) labels or (N, K)
    multi-hot) in ``paths`` order, the ``metrics`` of ``metrics.json`` and the fusion behind them."""

    metrics: Mapping[str, Any]
    scores: torch.Tensor
    targets: torch.Tensor
    paths: Sequence[str]
    class_names: Optional[Sequence[str]] = None
    fusion: str = "max-prob"

    @property
    def multi_label(self) -> bool:
        return self.targets.dim() == 2

    def names(self) -> List[str]:
        """Class names, or the default ones (``c000`` ... for multi-label data, else ``0`` ...)."""
        from tcpnet.apps.test import default_class_names

        k = int(self.scores.shape[1])
        return list(self.class_names) if self.class_names is not None else default_class_names(k, self.multi_label)


@dataclass
class ReportOptions:
    """How the page is made: ``details`` are extra (key, value) header lines; ``clip_loader(i)``
    gives video i's normalised 1x1-view clip (3, T, H, W), with which the ``worst`` videos get
    thumbnails, and with ``model`` as well their explain sheets."""

    title: str = "Test report"
    details: Sequence[tuple] = ()
    clip_loader: Optional[ClipLoader] = None
    model: Optional[nn.Module] = None
    worst: int = 8


def _confusion_sections(data: ReportData, names: List[str]) -> List[str]:
    """Single-label: the confusion figure, per-class accuracy worst first, most-confused pairs."""
    from tcpnet.engine.metrics import confusion_matrix, per_class_accuracy
    from tcpnet.viz import confusion_summary, to_png
    from tcpnet.viz.html import bar, image, section, table

    k = len(names)
    cm = confusion_matrix(data.targets, data.scores.float().argmax(1), k)
    out = [section("Confusion matrix", image(to_png(confusion_summary(cm, names)),
                                             "confusion matrix and per-class accuracy"),
                   "rows: true class, columns: predicted class; colour = fraction of the true class")]
    rows_n = cm.sum(1)
    acc = per_class_accuracy(cm)
    per_class = []
    for c in sorted(range(k), key=lambda c: (np.nan_to_num(acc[c], nan=2.0), c)):
        if rows_n[c] == 0:
            per_class.append((names[c], "-", "", "0", "-"))
            continue
        wrong = cm[c].copy()
        wrong[c] = 0
        top_wrong = f"{names[int(wrong.argmax())]} ({int(wrong.max())})" if wrong.max() > 0 else "-"
        per_class.append((names[c], f"{100 * acc[c]:.1f}", bar(acc[c], low=acc[c] < 0.5), str(int(rows_n[c])),
                          top_wrong))
    out.append(section("Per-class accuracy", table(["class", "accuracy (%)", "", "videos",
                                                    "most often predicted instead"], per_class,
                                                   numeric=(1, 3), bars=(2,)), "worst class first"))
    pair_rows = [(names[i], names[j], str(c), f"{100 * c / max(rows_n[i], 1):.1f}") for i, j, c in confused_pairs(cm)]
    out.append(section("Most-confused pairs",
                       table(["true class", "predicted as", "videos", "% of the true class"], pair_rows,
                             numeric=(2, 3)) if pair_rows else "<p>No confusions.</p>"))
    return out


def _ap_sections(data: ReportData, names: List[str]) -> List[str]:
    """Multi-label: per-class AP as bars and a table, worst first, over the classes with a positive
    video (a class without one has no AP); the note says how many classes were left out."""
    from tcpnet.engine.metrics import average_precision
    from tcpnet.viz import sorted_bars, to_png
    from tcpnet.viz.html import bar, image, section, table

    positives = data.targets.sum(0).long().tolist()
    shown = [c for c in range(len(names)) if positives[c] > 0]
    aps = {c: average_precision(data.scores[:, c], data.targets[:, c]) for c in shown}
    left_out = len(names) - len(shown)
    note = (f"{len(shown)} classes with a positive video; {left_out} without one left out (no AP)"
            if left_out else f"all {len(shown)} classes have a positive video")
    order = sorted(shown, key=lambda c: (aps[c], c))
    figure = to_png(sorted_bars([100 * aps[c] for c in shown], [names[c] for c in shown], "AP (%)", "per-class AP"))
    rows = [(names[c], f"{100 * aps[c]:.1f}", bar(aps[c], low=aps[c] < 0.5), str(positives[c])) for c in order]
    return [section("Per-class average precision", image(figure, "per-class AP"), note),
            section("Per-class AP table", table(["class", "AP (%)", "", "positive videos"], rows,
                                                numeric=(1, 3), bars=(2,)), f"worst class first; {note}")]


def _worst_card(data: ReportData, options: ReportOptions, names: List[str], probs: torch.Tensor,
                i: int, rank: int) -> str:
    """One worst-predicted video: its truth and top-3, thumbnails and (with a model) its explain sheet."""
    from tcpnet.apps.explain import SHEET_COLORS, clip_frames, explain_clip, render_explanation
    from tcpnet.viz import to_png
    from tcpnet.viz.html import escape, image

    top = torch.sort(probs[i], descending=True, stable=True)
    predicted = ", ".join(f"{names[int(c)]} {float(p):.3f}" for p, c in zip(top.values[:3], top.indices[:3]))
    if data.multi_label:
        truth = f"true: {', '.join(names[c] for c in torch.nonzero(data.targets[i]).flatten().tolist())}"
    else:
        t = int(data.targets[i])
        truth = f"true: {names[t]} (p = {float(probs[i, t]):.3f})"
    video = str(data.paths[i])
    parts = [f"<h3>{rank}. {escape(video)}</h3>", f"<p>{escape(truth)} · predicted: {escape(predicted)}</p>"]
    if options.clip_loader is None:
        return "<div class=\"card\">" + "\n".join(parts) + "</div>"
    clip = options.clip_loader(i)
    clip = clip.unsqueeze(0) if clip.dim() == 4 else clip[:1]
    expl = None
    if options.model is not None:
        expl = explain_clip(options.model, clip, activation="sigmoid" if data.multi_label else "softmax",
                            class_names=names)
        frames = expl.frames[0]
    else:
        frames = clip_frames(clip, _input_config(options.clip_loader))[0]
    parts.append(image(_thumbnails(frames), f"sampled frames of {video}", mime="image/jpeg"))
    if expl is not None:
        expl.video = video
        sheet = to_png(render_explanation(expl), colors=SHEET_COLORS)
        parts.append("<details><summary>explain sheet (Grad-CAM, attention, frame importance)</summary>"
                     + image(sheet, f"explain sheet of {video}") + "</details>")
    return "<div class=\"card\">" + "\n".join(parts) + "</div>"


def write_report(path: Union[str, Path], data: ReportData, options: Optional[ReportOptions] = None) -> Path:
    """Write the report page of ``data`` to ``path`` (see :class:`ReportOptions`) and return it."""
    from tcpnet.viz.html import escape, page, section

    options = options or ReportOptions()
    names = data.names()
    probs = video_probabilities(data.scores, data.fusion, data.multi_label)
    header = "".join(f"<dt>{escape(str(a))}</dt><dd>{escape(str(b))}</dd>" for a, b in options.details)
    body = [f"<h1>{escape(options.title)}</h1>\n<dl class=\"kv\">{header}</dl>\n",
            section("Metrics", _metrics_html(data.metrics))]
    body += _ap_sections(data, names) if data.multi_label else _confusion_sections(data, names)
    cards = [_worst_card(data, options, names, probs, i, rank)
             for rank, i in enumerate(worst_videos(probs, data.targets, options.worst), 1)]
    note = ("lowest probability of the true class" if not data.multi_label else
            "fewest true labels among the top-ranked classes") + "; explain sheets show the top predicted class"
    body.append(section("Worst-predicted videos", "<div class=\"cards\">\n" + "\n".join(cards) + "\n</div>"
                        if cards else "<p>No videos.</p>", note))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(options.title, "\n".join(body)), encoding="utf-8")
    return out


def _input_config(loader: ClipLoader):
    cfg = getattr(loader, "input_config", None)
    if cfg is None:
        raise ValueError("write_report: thumbnails without a model need clip_loader.input_config")
    return cfg


class _DatasetClips:
    """``i -> normalised 1x1 clip`` of a test dataset (deterministic test sampling)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.input_config = dataset.input_config

    def __call__(self, index: int) -> torch.Tensor:
        return self.dataset.load(index, np.random.default_rng(0))


def write_test_report(result: Any, cfg: Any, *, path: Union[str, Path, None] = None, worst: int = 8,
                      explain: bool = True, device: Optional[torch.device] = None) -> Path:
    """``report.html`` for a :class:`~tcpnet.apps.test.TestResult` of ``run_test(cfg, ...)``
    (default ``<result.output_dir>/report.html``). The worst videos are shown through the test
    pipeline's 1x1 view and explained with the first checkpoint of the run."""
    from tcpnet.data.build import build_test_dataset, read_list
    from tcpnet.apps.test import load_models

    m = result.metrics
    if path is None:
        if result.output_dir is None:
            raise ValueError("write_test_report: the result has no output_dir (not rank 0?); pass path=")
        path = Path(result.output_dir) / "report.html"
    if device is None:
        from tcpnet.engine.distributed import resolve_device

        device = resolve_device(cfg.device)
    model = load_models([m["checkpoints"][0]], device)[0]
    k = int(m["num_classes"])
    subset = "test" if cfg.data.test_list else "val"
    records = read_list(cfg.data, subset, path=m["test_list"], class_names=result.class_names, num_classes=k)
    if [r.path for r in records] != list(result.paths):
        raise ValueError(f"{m['test_list']}: the list no longer matches the tested videos")
    dataset = build_test_dataset(cfg.data, records, model.input_config, views=(1, 1), num_classes=k)
    checkpoints = m["checkpoints"]
    details = [("model", model.model_name or "-"), ("checkpoint" + ("s" if len(checkpoints) > 1 else ""),
                                                     ", ".join(checkpoints)),
               ("test list", m["test_list"]), ("classes", k)]
    if len(checkpoints) > 1:
        details.append(("explained with", checkpoints[0]))
    title = f"Test report: {model.model_name or Path(checkpoints[0]).stem}"
    data = ReportData(metrics=m, scores=result.scores, targets=result.targets, paths=result.paths,
                      class_names=result.class_names, fusion=m.get("fusion", "max-prob"))
    options = ReportOptions(title=title, details=details, clip_loader=_DatasetClips(dataset),
                            model=model if explain else None, worst=worst)
    out = write_report(path, data, options)
    logger.info("wrote %s", out)
    return out
