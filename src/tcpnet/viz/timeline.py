"""The timeline picture: class probabilities over a video's time, frames along the top and
(optionally) a band of segments underneath, all on one time axis. One Matplotlib figure drawn
off-screen (object API, Agg canvas), returned as an RGB array."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["render_timeline", "class_colors"]

FIG_W, LEFT, RIGHT = 12.0, 0.75, 2.3  # inches: figure width, margins (the legend sits on the right)
TITLE_H, THUMB_H, PLOT_H, BAND_H, AXIS_H = 0.45, 0.95, 2.6, 0.42, 0.5
OTHER = "#b0b0b0"  # colour of a segment whose class is not among the plotted lines


def class_colors(count: int) -> list:
    """``count`` distinct colours (tab10, then tab20), as hex strings."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [to_hex(cmap(i % cmap.N)) for i in range(count)]


def _thumbs(ax, thumbnails: Sequence[Tuple[float, np.ndarray]], duration: float, width_in: float) -> None:
    """Each frame centred on its time, aspect kept, no wider than its share of the axis."""
    share = duration / max(1, len(thumbnails))
    for t, img in thumbnails:
        h, w = img.shape[:2]
        width_in_max = 0.96 * width_in * share / duration
        w_in = min(width_in_max, (THUMB_H - 0.1) * w / h)
        h_frac = (w_in * h / w) / THUMB_H
        w_sec = w_in / width_in * duration
        x0 = min(max(t - w_sec / 2, 0.0), duration - w_sec)
        ax.imshow(img, extent=(x0, x0 + w_sec, 0.5 - h_frac / 2, 0.5 + h_frac / 2), aspect="auto",
                  interpolation="bilinear")
    ax.set_xlim(0, duration)  # imshow moves the limits to its image
    ax.set_ylim(0, 1)
    ax.set_axis_off()


def _band(ax, segments: Sequence[Tuple[float, float, str]], colors: dict, duration: float) -> None:
    """Segments as coloured bars, named where they are wide enough."""
    for start, end, name in segments:
        ax.broken_barh([(start, end - start)], (0, 1), facecolors=colors.get(name, OTHER), edgecolor="white", lw=0.5)
        if end - start > 0.05 * duration:
            ax.text((start + end) / 2, 0.5, name, ha="center", va="center", fontsize=7.5, clip_on=True)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel("segments", fontsize=8, rotation=0, ha="right", va="center")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def render_timeline(times: np.ndarray, values: np.ndarray, names: Sequence[str], *, duration: float,
                    thumbnails: Sequence[Tuple[float, np.ndarray]] = (),
                    segments: Optional[Sequence[Tuple[float, float, str]]] = None, title: str = "",
                    ylabel: str = "probability", dpi: int = 100) -> np.ndarray:
    """Draw the picture, uint8 RGB (H, W, 3).

    ``times`` (W,) seconds of each window's centre; ``values`` (W, C) the probabilities of the C
    classes ``names``, one line each; ``thumbnails``: (time, uint8 (h, w, 3) frame) pairs;
    ``segments``: (start, end, class name) bars; ``duration``: the end of the time axis.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.asarray(values, dtype=np.float64).reshape(len(times), -1)
    if values.shape[1] != len(names):
        raise ValueError(f"render_timeline: {values.shape[1]} value columns for {len(names)} names")
    duration = float(duration) if duration > 0 else 1.0
    rows = [("thumbs", THUMB_H)] * bool(thumbnails) + [("plot", PLOT_H)] + [("band", BAND_H)] * (segments is not None)
    fig_h = TITLE_H + sum(h for _, h in rows) + 0.12 * len(rows) + AXIS_H
    fig = Figure(figsize=(FIG_W, fig_h), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    width_in = FIG_W - LEFT - RIGHT
    fig.text(0.1 / FIG_W, 1 - 0.3 / fig_h, title, fontsize=11, fontweight="bold")
    colors = dict(zip(names, class_colors(len(names))))
    top, axes = TITLE_H, {}
    for kind, h in rows:
        axes[kind] = fig.add_axes((LEFT / FIG_W, 1 - (top + h) / fig_h, width_in / FIG_W, h / fig_h))
        axes[kind].set_xlim(0, duration)
        top += h + 0.12
    if thumbnails:
        _thumbs(axes["thumbs"], thumbnails, duration, width_in)
    ax = axes["plot"]
    marker = "o" if len(times) < 40 else None
    for i, name in enumerate(names):
        ax.plot(times, values[:, i], color=colors[name], lw=1.6, marker=marker, ms=3, label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if segments is not None:
        _band(axes["band"], segments, colors, duration)
        ax.tick_params(labelbottom=False)
    last = axes["band"] if segments is not None else ax
    last.set_xlabel("time (s)", fontsize=9)
    last.tick_params(axis="x", labelsize=8)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
