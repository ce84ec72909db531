"""The explain contact sheet: rows of frame strips (frames, heat-map overlays) above rows of
per-frame bars, all aligned on the same frame columns, with a title and notes. One Matplotlib
figure drawn off-screen (object API, no pyplot state), returned as an RGB array."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from tcpnet.viz.layout import mosaic, upscale

__all__ = ["BarRow", "render_sheet"]

GAP = 4  # pixels between frames in a strip


@dataclass
class BarRow:
    """One bar per frame under the strips: ``label`` at the left, values annotated with ``fmt``;
    ``ylim`` fixes the axis (default: fitted around the values and 0)."""

    label: str
    values: Sequence[float]
    fmt: str = "{:+.2f}"
    ylim: Optional[Tuple[float, float]] = None
    color: str = "#4c72b0"
    negative_color: str = "#c44e52"


def _fit_ylim(values: np.ndarray) -> Tuple[float, float]:
    lo, hi = float(min(values.min(), 0.0)), float(max(values.max(), 0.0))
    span = hi - lo or 1.0
    return lo - 0.18 * span * (lo < 0), hi + 0.22 * span


def render_sheet(*, title: str, frame_labels: Sequence[str], rows: Sequence[Tuple[str, np.ndarray]],
                 bars: Sequence[BarRow] = (), lines: Sequence[str] = (), footer: Sequence[str] = (),
                 min_side: int = 112, dpi: int = 100) -> np.ndarray:
    """Draw the sheet and return it as uint8 RGB (H, W, 3).

    ``rows``: (label, uint8 (T, H, W, 3)) strips, shown at least ``min_side`` pixels high
    (nearest-neighbour upscaling); ``bars``: one :class:`BarRow` of T values each; ``lines``:
    text under the title; ``footer``: notes at the bottom.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("render_sheet: at least one row of frames is needed")
    t = rows[0][1].shape[0]
    if len(frame_labels) != t or any(r[1].shape[0] != t for r in rows) or any(len(b.values) != t for b in bars):
        raise ValueError(f"render_sheet: every row, bar row and the labels need {t} frames")
    strips = [(label, mosaic(upscale(np.asarray(frames), min_side), gap=GAP)) for label, frames in rows]
    hm, wm = strips[0][1].shape[:2]
    side = (wm - (t - 1) * GAP) / t
    centres = np.arange(t) * (side + GAP) + side / 2

    left, right, pad = 1.6, 0.25, 0.08
    width = wm / dpi
    fig_w = max(left + width + right, 6.0)
    title_h, line_h, label_h, bar_h, foot_h = 0.42, 0.21, 0.22, 1.0, 0.18
    heights = ([title_h] + [line_h] * len(lines) + [label_h] + [hm / dpi + pad] * len(strips)
               + [bar_h + 0.5] * len(bars) + [foot_h] * len(footer) + [0.12])
    fig_h = sum(heights)
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)

    def fy(inches_from_top: float) -> float:
        return 1.0 - inches_from_top / fig_h

    y = 0.12
    fig.text(0.12 / fig_w, fy(y + 0.22), title, fontsize=12, fontweight="bold", va="baseline")
    y += title_h
    for line in lines:
        fig.text(0.12 / fig_w, fy(y + 0.15), line, fontsize=9, va="baseline")
        y += line_h
    for c, lab in zip(centres, frame_labels):
        fig.text((left + c / dpi) / fig_w, fy(y + 0.16), lab, fontsize=8, ha="center", va="baseline")
    y += label_h
    for label, strip in strips:
        h = strip.shape[0] / dpi
        ax = fig.add_axes((left / fig_w, fy(y + h), width / fig_w, h / fig_h))
        ax.imshow(strip, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        fig.text(0.12 / fig_w, fy(y + h / 2), "\n".join(textwrap.wrap(label, 16)), fontsize=9, va="center")
        y += h + pad
    for bar in bars:
        vals = np.nan_to_num(np.asarray(bar.values, dtype=np.float64))
        y += 0.28
        ax = fig.add_axes((left / fig_w, fy(y + bar_h), width / fig_w, bar_h / fig_h))
        colors = [bar.negative_color if v < 0 else bar.color for v in vals]
        ax.bar(centres, vals, width=0.6 * side, color=colors)
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xlim(0, wm)
        ax.set_ylim(*(bar.ylim or _fit_ylim(vals)))
        ax.set_xticks(centres, [str(i) for i in range(t)], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        for side_name in ("top", "right"):
            ax.spines[side_name].set_visible(False)
        lo, hi = ax.get_ylim()
        for c, v in zip(centres, vals):
            ax.text(c, v + 0.03 * (hi - lo) * (1 if v >= 0 else -1), bar.fmt.format(v), ha="center",
                    va="bottom" if v >= 0 else "top", fontsize=7)
        ax.set_title(bar.label, loc="left", fontsize=9)
        y += bar_h + 0.22  # room for the tick labels
    for note in footer:
        fig.text(0.12 / fig_w, fy(y + 0.14), note, fontsize=7.5, color="#444444", va="baseline")
        y += foot_h
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
