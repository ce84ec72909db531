"""Report figures drawn off-screen with Matplotlib's object API: the confusion matrix beside the
sorted per-class accuracy, and sorted horizontal bars (per-class AP)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["confusion_summary", "sorted_bars"]


def _canvas(width: float, height: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, facecolor="white", layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _barh(ax, values: np.ndarray, names: Sequence[str], xlabel: str, fontsize: float) -> None:
    order = np.argsort(np.nan_to_num(values, nan=-1.0), kind="stable")
    vals = np.nan_to_num(values[order], nan=0.0)
    y = np.arange(len(order))
    ax.barh(y, vals, color=["#c44e52" if v < 50 else "#4c72b0" for v in vals])
    ax.set_yticks(y, [names[i] for i in order], fontsize=fontsize)
    ax.set_xlim(0, 100)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if len(order) <= 40:
        for yi, v in zip(y, vals):
            ax.text(min(v + 1.0, 88.0), yi, f"{v:.1f}", va="center", fontsize=fontsize)


def confusion_summary(cm: np.ndarray, names: Sequence[str], dpi: int = 100) -> np.ndarray:
    """uint8 RGB figure: the row-normalised confusion matrix (counts written in the cells for up
    to 20 classes) beside per-class accuracy, worst class at the bottom."""
    cm = np.asarray(cm)
    k = cm.shape[0]
    side = float(np.clip(2.5 + 0.28 * k, 4.0, 14.0))
    fig = _canvas(2 * side + 1.5, side + 1.0, dpi)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.15, 1.0])
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, np.maximum(rows, 1), dtype=np.float64)
    ax1.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fs = 8 if k <= 20 else 6
    if k <= 60:
        ax1.set_xticks(range(k), names, rotation=90, fontsize=fs)
        ax1.set_yticks(range(k), names, fontsize=fs)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax1.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                             color="white" if norm[i, j] > 0.5 else "black")
    ax1.set_xlabel("predicted", fontsize=9)
    ax1.set_ylabel("true", fontsize=9)
    ax1.set_title("confusion matrix (fraction of the true class)", fontsize=10)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(rows[:, 0] > 0, 100.0 * np.diag(cm) / np.maximum(rows[:, 0], 1), np.nan)
    _barh(ax2, acc, names, "accuracy (%)", fs)
    ax2.set_title("per-class accuracy", fontsize=10)
    return _rgb(fig)


def sorted_bars(values: Sequence[float], names: Sequence[str], xlabel: str, title: str,
                dpi: int = 100) -> np.ndarray:
    """uint8 RGB figure of horizontal bars (percent), lowest at the bottom; NaN drawn as 0."""
    vals = np.asarray(values, dtype=np.float64)
    fig = _canvas(7.0, float(np.clip(1.2 + 0.24 * len(vals), 2.5, 30.0)), dpi)
    ax = fig.subplots()
    _barh(ax, vals, names, xlabel, 8 if len(vals) <= 40 else 6)
    ax.set_title(title, fontsize=10)
    return _rgb(fig)
