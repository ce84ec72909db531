"""A synthetic, order-dependent video dataset: real H.264 mp4 files whose classes differ only in time.

Classes come in pairs.  The second class of a pair is, sample for sample, the exact time
reversal of the first: :func:`sample_params` draws *the same* parameters for class ``2k`` and
``2k + 1`` (only the ``reverse`` flag differs) and :func:`render` reverses the noise-free frame
sequence of the "forward" draw, adding independent per-frame noise only afterwards.  The two
classes of a pair therefore have identical distributions of frame *sets*; every order-less
statistic of a clip (the time-averaged frame, global average pooling over time, a covariance
over all space-time positions, any function of the multiset of frames) has the same distribution
in both classes, so an order-less model is at chance within a pair *by construction*.  Only the
order of the frames tells the two apart; the tests check this property exactly.

Pairs (``PAIR_KINDS``; the default 8 classes use the first four)::

    0/1   move_right   / move_left      an object crosses the frame left->right (direction
                                        within +-30 deg of horizontal) / right->left
    2/3   grow         / shrink         an object grows from ~6 % to ~30 % of the frame / shrinks
    4/5   warm_to_cool / cool_to_warm   an object's colour fades red/orange/yellow -> cyan/blue / back
    6/7   rotate_cw    / rotate_ccw     a bar with a marker at one end turns 150-270 deg clockwise /
                                        counter-clockwise (on screen)
    8/9   orbit_cw     / orbit_ccw      an object travels 180-300 deg along a circle, cw / ccw
    10/11 move_down    / move_up        an object crosses the frame top->bottom / bottom->top

Every clip has a random static low-frequency texture background (two octaves of a bilinearly
upsampled random grid, desaturated), a random outlined shape (disk, square, triangle, ring;
a bar for the rotation pair) with a random saturated colour, position, size and speed, and
i.i.d. Gaussian pixel noise per frame (std 6 by default; the codec smooths some of it).
Motion is linear in time over the *whole* clip, so any 8 frames taken by TSN segment sampling
show it.  Do NOT train with horizontal flips (or temporal reversal): a flip turns move_right
into move_left and clockwise into counter-clockwise.

Measured with ``tcpnet demo`` (resnet_tiny, 8 segments, 64x64, 24 frames, 48 train / 64 val
videos per class, 15 epochs SGD, CPU, generator version 2): TCP head 97.5 % val top-1 (100 %
within pairs); GAP head 44.9 % top-1 and 49.0 % within pairs (chance 50 %; with 512 val videos
the standard error of that figure is 2.2 points -- an earlier 128-video val set gave 59-62 %
by chance, while the same GAP model scored 49.5 % on 768 further videos).

On disk (``make_synthetic_dataset``)::

    out_dir/videos/<split>/<class_name>/<NNNNN>.mp4   H.264 (libx264, yuv420p, intra-only, constant QP)
    out_dir/train.txt, out_dir/val.txt                 list files, one video per line:
                                                       "videos/train/grow/00003.mp4 32 2"
                                                       = <path relative to out_dir> <num_frames> <label>
                                                       (three space-separated fields, the TSN list
                                                       format: ``tcpnet.data.list_parsers.read_frame_list`` reads
                                                       it; ``load_clip`` takes the .mp4 path)
    out_dir/classes.txt                                one class name per line; line i = label i
    out_dir/params.jsonl                               one JSON object per video: "path", "split",
                                                       "label", "class_name" and "params" (the
                                                       ``SyntheticParams.to_dict()`` it was rendered from)
    out_dir/manifest.json                              seed and settings, and the files written;
                                                       a matching, complete manifest means
                                                       "already generated: reuse"

The generator writes only into an empty folder or one whose manifest is its own, and it removes
only the files such a manifest lists (``--overwrite``, a new generator version): files anyone else
put in the folder, ``videos/`` included, are never touched.

Generation is deterministic: each video's parameters come from
``numpy.random.default_rng([seed, split, label, index])``, independent of worker count and
order; frames are converted to YUV in NumPy and encoded single-threaded without x264's mbtree
(see ``tcpnet.data.writer.H264Writer``), which makes the files byte-identical between runs, worker
counts and processes on the same machine and libx264 build (checked by the tests).

Why intra-only at a constant quantiser (``write_clip``, generator version 2): the two classes of
a pair must still be exact time reversals *after* coding, or single decoded frames could carry the
order.  With P/B frames (version 1: crf 23, gop 8) they were not: ``decode(encode(x[::-1]))``
differed from ``decode(encode(x))[::-1]`` by 3.7 grey levels on average (motion-compensated
prediction, residuals at the uncovered trailing edge, the keyframe pattern and crf rate control
all depend on the direction of time; intra-only at crf 23 still differed by 1.1, through rate
control).  A GAP model trained on version-1 data scored the coded reversal of a clip
systematically differently from the clip (paired t = 2.8, 192 pairs) -- a real but weak leak
(its within-pair accuracy on fresh clips was 53 % / 47 %, as with lossless frames).  With every
frame an IDR frame at one fixed QP each frame is coded from itself alone, so the decoded reversed
clip IS the reversed decoded clip, exactly (``tests/test_synthetic.py`` checks it bit for bit).
QP 28 distorts the (noisy) input about as much as crf 23 with P/B frames did (PSNR vs the encoder
input ~30 / 31 dB at 64 / 112 px) at ~1.1-1.3x the file size.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from tcpnet.data.writer import write_video
from tcpnet.tools.prepare import mp_context, process_pool

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: intra-only constant-QP coding (1 had P/B frames: order leak)
SPLITS = ("train", "val")

# (kind, forward class name, reversed class name); class 2k is forward, 2k+1 its time reversal.
PAIR_KINDS: tuple[tuple[str, str, str], ...] = (
    ("translate", "move_right", "move_left"),
    ("scale", "grow", "shrink"),
    ("hue", "warm_to_cool", "cool_to_warm"),
    ("rotate", "rotate_cw", "rotate_ccw"),
    ("orbit", "orbit_cw", "orbit_ccw"),
    ("vertical", "move_down", "move_up"),
)
MAX_CLASSES = 2 * len(PAIR_KINDS)
SHAPES = ("disk", "square", "triangle", "ring")
OUTLINE_RGB = (25.0, 25.0, 25.0)
QP = 28  # constant H.264 quantiser of the intra-only videos (see the module docstring)
PRESET = "veryfast"


def default_class_names(num_classes: int = 8) -> list[str]:
    """The default class names for ``num_classes`` (even, <= MAX_CLASSES): forward, reverse per pair."""
    _check_num_classes(num_classes)
    return [name for _, fwd, rev in PAIR_KINDS[: num_classes // 2] for name in (fwd, rev)]


@dataclass(frozen=True)
class SyntheticParams:
    """Everything needed to render one clip; positions/sizes are fractions of the frame side,
    angles in degrees (screen coordinates, y down: increasing angle = clockwise)."""

    kind: str
    class_index: int
    reverse: bool
    num_frames: int
    size: int
    texture_seed: int
    noise_seed: int
    noise_std: float
    shape: str
    color_start: tuple[float, float, float]
    color_end: tuple[float, float, float]
    radius_start: float
    radius_end: float
    angle_start: float
    angle_end: float
    trajectory: str  # "line": center_start -> center_end; "arc": around arc_center
    center_start: tuple[float, float]
    center_end: tuple[float, float]
    arc_center: tuple[float, float] = (0.5, 0.5)
    arc_radius: float = 0.0
    arc_start: float = 0.0
    arc_end: float = 0.0
    bar_width: float = 0.0  # half-width of the bar (shape "bar")
    marker_color: tuple[float, float, float] = (255.0, 255.0, 255.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SyntheticParams":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)


# ----------------------------------------------------------------------------------- sampling
def _hsv_to_rgb(h_deg: float, s: float, v: float) -> tuple[float, float, float]:
    h = (h_deg % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    m = v - c
    return (255.0 * (r + m), 255.0 * (g + m), 255.0 * (b + m))


def _random_color(rng: np.random.Generator, hue: Optional[float] = None) -> tuple[float, float, float]:
    h = rng.uniform(0.0, 360.0) if hue is None else hue
    return _hsv_to_rgb(h, rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0))


def _line_inside(rng: np.random.Generator, direction_deg: float, length: float, margin: float):
    """A segment of given direction/length with a random midpoint, both ends inside [margin, 1-margin]."""
    dx = 0.5 * length * math.cos(math.radians(direction_deg))
    dy = 0.5 * length * math.sin(math.radians(direction_deg))
    lo_x, hi_x = margin + abs(dx), 1 - margin - abs(dx)
    lo_y, hi_y = margin + abs(dy), 1 - margin - abs(dy)
    mx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else 0.5
    my = rng.uniform(lo_y, hi_y) if hi_y > lo_y else 0.5
    return (mx - dx, my - dy), (mx + dx, my + dy)


def _drift(rng: np.random.Generator, max_len: float):
    """A short drift of uniformly random direction around a central point (order-symmetric nuisance)."""
    c0 = (rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6))
    a = rng.uniform(0.0, 2 * math.pi)
    r = rng.uniform(0.0, max_len)
    return c0, (c0[0] + r * math.cos(a), c0[1] + r * math.sin(a))


def sample_params(
    rng: np.random.Generator,
    class_index: int,
    *,
    num_frames: int = 32,
    size: int = 112,
    noise_std: float = 6.0,
) -> SyntheticParams:
    """Draw the parameters of one clip of class ``class_index``.

    Classes ``2k`` and ``2k+1`` consume ``rng`` identically and get identical parameters except
    ``reverse`` (and ``class_index``): the reversed class is the time reversal of a forward draw.
    """
    if class_index < 0 or class_index >= MAX_CLASSES:
        raise ValueError(f"class_index must be in [0, {MAX_CLASSES}), got {class_index}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    kind = PAIR_KINDS[class_index // 2][0]
    reverse = bool(class_index % 2)
    texture_seed = int(rng.integers(0, 2**31 - 1))
    noise_seed = int(rng.integers(0, 2**31 - 1))
    shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
    angle = float(rng.uniform(0.0, 360.0))
    color = _random_color(rng)
    common = dict(
        kind=kind, class_index=class_index, reverse=reverse, num_frames=num_frames, size=size,
        texture_seed=texture_seed, noise_seed=noise_seed, noise_std=float(noise_std),
        shape=shape, color_start=color, color_end=color, angle_start=angle, angle_end=angle,
        trajectory="line",
    )
    if kind in ("translate", "vertical"):
        r = rng.uniform(0.09, 0.14)
        base = 0.0 if kind == "translate" else 90.0  # screen y points down: 90 deg = downwards
        direction = base + rng.uniform(-30.0, 30.0)
        c0, c1 = _line_inside(rng, direction, rng.uniform(0.45, 0.7), margin=r + 0.02)
        return SyntheticParams(**common, radius_start=r, radius_end=r, center_start=c0, center_end=c1)
    if kind == "scale":
        r0, r1 = rng.uniform(0.05, 0.08), rng.uniform(0.26, 0.34)
        c0, c1 = _drift(rng, 0.08)
        return SyntheticParams(**common, radius_start=r0, radius_end=r1, center_start=c0, center_end=c1)
    if kind == "hue":
        r = rng.uniform(0.14, 0.22)
        warm = _random_color(rng, hue=rng.uniform(-20.0, 45.0))
        cool = _random_color(rng, hue=rng.uniform(170.0, 250.0))
        c0, c1 = _drift(rng, 0.25)
        common.update(color_start=warm, color_end=cool)
        return SyntheticParams(**common, radius_start=r, radius_end=r, center_start=c0, center_end=c1)
    if kind == "rotate":
        half_len = rng.uniform(0.22, 0.32)
        half_w = rng.uniform(0.035, 0.05)
        turn = rng.uniform(150.0, 270.0)
        c0, c1 = _drift(rng, 0.06)
        marker = _random_color(rng, hue=(rng.uniform(120.0, 240.0) + _hue_of(color)) % 360.0)
        common.update(shape="bar", angle_end=angle + turn)
        return SyntheticParams(**common, radius_start=half_len, radius_end=half_len,
                               center_start=c0, center_end=c1, bar_width=half_w, marker_color=marker)
    if kind == "orbit":
        r = rng.uniform(0.08, 0.12)
        ac = (rng.uniform(0.45, 0.55), rng.uniform(0.45, 0.55))
        ar = rng.uniform(0.22, 0.3)
        a0 = rng.uniform(0.0, 360.0)
        a1 = a0 + rng.uniform(180.0, 300.0)
        common.update(trajectory="arc")
        return SyntheticParams(**common, radius_start=r, radius_end=r, center_start=ac, center_end=ac,
                               arc_center=ac, arc_radius=ar, arc_start=a0, arc_end=a1)
    raise AssertionError(kind)  # pragma: no cover


def _hue_of(rgb: Sequence[float]) -> float:
    r, g, b = (c / 255.0 for c in rgb)
    mx, mn = max(r, g, b), min(r, g, b)
    if mx == mn:
        return 0.0
    if mx == r:
        h = (g - b) / (mx - mn) % 6
    elif mx == g:
        h = (b - r) / (mx - mn) + 2
    else:
        h = (r - g) / (mx - mn) + 4
    return 60.0 * h


# ---------------------------------------------------------------------------------- rendering
def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a (g, g, 3) grid to (size, size, 3), cell centres aligned."""
    g = grid.shape[0]
    pos = (np.arange(size) + 0.5) / size * g - 0.5
    i0 = np.clip(np.floor(pos).astype(int), 0, g - 1)
    i1 = np.clip(i0 + 1, 0, g - 1)
    w = np.clip(pos - i0, 0.0, 1.0)
    rows = grid[i0] * (1 - w)[:, None, None] + grid[i1] * w[:, None, None]
    return rows[:, i0] * (1 - w)[None, :, None] + rows[:, i1] * w[None, :, None]


def render_background(params: SyntheticParams) -> np.ndarray:
    """The static textured background, float64 (H, W, 3) in 0..255."""
    rng = np.random.default_rng(params.texture_seed)
    g = int(rng.integers(3, 7))
    level = rng.uniform(80.0, 150.0)
    tint = rng.uniform(-15.0, 15.0, size=3)
    coarse = rng.uniform(-35.0, 35.0, size=(g, g, 1)) + rng.uniform(-10.0, 10.0, size=(g, g, 3))
    fine = rng.uniform(-15.0, 15.0, size=(2 * g + 1, 2 * g + 1, 3))
    bg = level + tint + _upsample(coarse, params.size) + _upsample(fine, params.size)
    return np.clip(bg, 0.0, 255.0)


def _shape_sdf(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a shape centred at 0 in local coordinates."""
    if shape == "disk":
        return np.hypot(x, y) - r
    if shape == "ring":
        return np.abs(np.hypot(x, y) - 0.72 * r) - 0.28 * r
    if shape == "square":
        a = 0.82 * r
        qx, qy = np.abs(x) - a, np.abs(y) - a
        return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    if shape == "triangle":  # circumradius r: max over the three edge half-planes (inradius r/2)
        d = None
        for k in range(3):
            a = math.radians(-90.0 + 120.0 * k)
            e = x * math.cos(a) + y * math.sin(a) - 0.5 * r
            d = e if d is None else np.maximum(d, e)
        return d
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES + ('bar',)}")


def _composite(frame: np.ndarray, sdf: np.ndarray, rgb: Sequence[float], outline: bool = True) -> None:
    """Alpha-blend a 1-px anti-aliased shape (with a dark 1.5-px outline) into ``frame`` in place."""
    if outline:
        a = np.clip(2.0 - sdf, 0.0, 1.0)[..., None]
        frame *= 1 - a
        frame += a * np.asarray(OUTLINE_RGB)
    a = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
    frame *= 1 - a
    frame += a * np.asarray(rgb, dtype=np.float64)


def render_clean(params: SyntheticParams) -> np.ndarray:
    """The noise-free FORWARD frames (ignores ``reverse``), float32 (T, H, W, 3) in 0..255."""
    T, S = params.num_frames, params.size
    bg = render_background(params)
    coords = np.arange(S, dtype=np.float64) + 0.5
    out = np.empty((T, S, S, 3), dtype=np.float32)
    c_start, c_end = np.asarray(params.color_start), np.asarray(params.color_end)
    for t in range(T):
        s = t / (T - 1)
        if params.trajectory == "arc":
            th = math.radians(params.arc_start + s * (params.arc_end - params.arc_start))
            cx = params.arc_center[0] + params.arc_radius * math.cos(th)
            cy = params.arc_center[1] + params.arc_radius * math.sin(th)
        else:
            cx = params.center_start[0] + s * (params.center_end[0] - params.center_start[0])
            cy = params.center_start[1] + s * (params.center_end[1] - params.center_start[1])
        r = (params.radius_start + s * (params.radius_end - params.radius_start)) * S
        ang = math.radians(params.angle_start + s * (params.angle_end - params.angle_start))
        color = c_start + s * (c_end - c_start)
        # Work on the object's bounding box only (everything outside is background).
        if params.shape == "bar":
            w = params.bar_width * S
            extent = math.hypot(r + 0.5 * w, 1.7 * w)
        else:
            extent = 1.2 * r
        x0, x1 = max(int(cx * S - extent - 4), 0), min(int(cx * S + extent + 5), S)
        y0, y1 = max(int(cy * S - extent - 4), 0), min(int(cy * S + extent + 5), S)
        frame = out[t]
        frame[:] = bg
        if x1 <= x0 or y1 <= y0:
            continue
        dx = coords[None, x0:x1] - cx * S
        dy = coords[y0:y1, None] - cy * S
        ca, sa = math.cos(ang), math.sin(ang)
        lx, ly = dx * ca + dy * sa, -dx * sa + dy * ca  # rotate into the object's frame
        crop = frame[y0:y1, x0:x1]
        if params.shape == "bar":
            qx, qy = np.abs(lx) - r, np.abs(ly) - w
            bar = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
            _composite(crop, bar, color)
            _composite(crop, np.hypot(lx - (r - 1.2 * w), ly) - 1.7 * w, params.marker_color)
        else:
            _composite(crop, _shape_sdf(params.shape, lx, ly, r), color)
    return out


def render(params: SyntheticParams, noise: bool = True) -> np.ndarray:
    """The clip as uint8 (T, H, W, 3): forward frames, time-reversed if ``params.reverse``,
    then (if ``noise``) i.i.d. Gaussian noise of std ``noise_std`` per pixel and frame."""
    frames = render_clean(params)
    if params.reverse:
        frames = np.ascontiguousarray(frames[::-1])
    if noise and params.noise_std > 0:
        rng = np.random.default_rng(params.noise_seed)
        noise_arr = rng.standard_normal(size=frames.shape, dtype=np.float32)
        noise_arr *= np.float32(params.noise_std)
        frames += noise_arr
    np.rint(frames, out=frames)
    np.clip(frames, 0, 255, out=frames)
    return frames.astype(np.uint8)


# ------------------------------------------------------------------------------- dataset files
@dataclass(frozen=True)
class SyntheticDataset:
    """Where a generated dataset lives and what it holds."""

    root: Path
    train_list: Path
    val_list: Path
    classes_file: Path
    params_file: Path
    manifest_file: Path
    class_names: list[str]
    num_videos: dict[str, int]
    reused: bool
    seconds: float


class OtherSettingsError(FileExistsError):
    """The folder holds a synthetic dataset this generator wrote, with other settings."""


def _check_num_classes(num_classes: int) -> None:
    if num_classes < 2 or num_classes % 2 or num_classes > MAX_CLASSES:
        raise ValueError(
            f"num_classes must be even and in [2, {MAX_CLASSES}] (classes come in time-reversed "
            f"pairs of {len(PAIR_KINDS)} kinds), got {num_classes}"
        )


def _check_class_names(names: Sequence[str], num_classes: int) -> list[str]:
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise ValueError(f"classes: expected {num_classes} names, got {len(names)}: {names}")
    for n in names:
        if not n or any(c.isspace() for c in n) or "/" in n or n in (".", ".."):
            raise ValueError(f"classes: invalid class name {n!r} (used as a folder name and list entry: "
                             "no whitespace or '/')")
    if len(set(names)) != len(names):
        raise ValueError(f"classes: names must be unique, got {names}")
    return names


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`make_synthetic_dataset` generates: ``seed``, the classes (``num_classes`` default
    names, or ``classes``), videos per class and split, frames, frame side (even, >= 16), fps,
    pixel noise and the H.264 quantiser and preset. Checked when made."""

    seed: int = 0
    num_classes: int = 8
    train_per_class: int = 60
    val_per_class: int = 20
    num_frames: int = 32
    size: int = 112
    fps: int = 16
    classes: Optional[Sequence[str]] = None
    noise_std: float = 6.0
    qp: int = QP
    preset: str = PRESET

    def __post_init__(self) -> None:
        _check_num_classes(self.num_classes)
        names = default_class_names(self.num_classes) if self.classes is None else self.classes
        object.__setattr__(self, "classes", tuple(_check_class_names(names, self.num_classes)))
        if self.size < 16 or self.size % 2:
            raise ValueError(f"size must be even and >= 16 (yuv420p), got {self.size}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        if self.train_per_class < 0 or self.val_per_class < 0:
            raise ValueError("train_per_class and val_per_class must be >= 0")

    def settings(self) -> dict[str, Any]:
        """The manifest's record of the request: a folder with the same settings is reused."""
        return {
            "format": "tcpnet-synthetic", "generator_version": GENERATOR_VERSION, "seed": int(self.seed),
            "num_classes": self.num_classes, "classes": list(self.classes),
            "train_per_class": int(self.train_per_class), "val_per_class": int(self.val_per_class),
            "num_frames": int(self.num_frames), "size": int(self.size), "fps": int(self.fps),
            "noise_std": float(self.noise_std), "codec": "libx264", "pix_fmt": "yuv420p", "coding": "intra-only",
            "gop": 1, "qp": int(self.qp), "preset": self.preset,
            "list_format": "<path relative to root> <num_frames> <label>",
        }

    def counts(self) -> dict[str, int]:
        return {"train": self.train_per_class * self.num_classes, "val": self.val_per_class * self.num_classes}


def write_clip(path: Union[str, os.PathLike], frames: np.ndarray, *, fps: int = 16, qp: int = QP,
               preset: str = PRESET) -> Path:
    """Encode a synthetic clip as the dataset does: H.264 with every frame intra-coded at the
    constant quantiser ``qp``, so each decoded frame depends on its own input frame only
    (reversing the input reverses the decoded video exactly; no order leaks into single frames)."""
    return write_video(path, frames, fps=fps, gop=1, qp=qp, preset=preset)


def _render_and_write(job: tuple[dict[str, Any], str, int, int, str]) -> str:
    params_dict, path, fps, qp, preset = job
    write_clip(path, render(SyntheticParams.from_dict(params_dict)), fps=fps, qp=qp, preset=preset)
    return path


_CODEC_KEYS = ("generator_version", "codec", "pix_fmt", "coding", "crf", "gop", "qp", "preset")
_LIST_FILES = ("train.txt", "val.txt", "classes.txt", "params.jsonl", "manifest.json")
_NOT_SETTINGS = ("complete", "seconds", "files")  # manifest keys that record the run, not the request


def _drop_codec(settings: dict[str, Any]) -> dict[str, Any]:
    """Manifest settings without the generator version and coding fields (which change with it)."""
    return {k: v for k, v in settings.items() if k not in _CODEC_KEYS}


def _video_path(split: str, name: str, index: int) -> str:
    return f"videos/{split}/{name}/{index:05d}.mp4"


def _files_written(manifest: dict[str, Any]) -> Optional[list[str]]:
    """The paths (relative to the folder) a manifest of ours says we wrote: its ``files``, or for a
    manifest that predates that list, the layout its settings imply; None when it says neither."""
    if isinstance(manifest.get("files"), list):
        return [str(f) for f in manifest["files"]]
    try:
        per_split = {"train": int(manifest["train_per_class"]), "val": int(manifest["val_per_class"])}
        videos = [_video_path(split, str(name), i) for split in SPLITS for name in manifest["classes"]
                  for i in range(per_split[split])]
    except (KeyError, TypeError, ValueError):
        return None
    return videos + list(_LIST_FILES)


def _remove_ours(root: Path, written: Sequence[str]) -> None:
    """Delete the files a manifest says we wrote, then the folders that leaves empty; a file or
    folder we did not write is never touched (a folder still holding one stays, logged)."""
    folders = set()
    for rel in written:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            logger.warning("%s: manifest lists %s, outside the folder: not removed", root, rel)
            continue
        path = root / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
        folders.update(p for p in path.parents if root in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        elif folder.is_dir():
            logger.info("%s: kept, it holds files the synthetic generator did not write", folder)


def _read_manifest(root: Path) -> Optional[dict[str, Any]]:
    """Our manifest in ``root``; None when the folder is absent or empty; FileExistsError for a folder
    that holds anything else (no manifest, an unreadable one, another tool's)."""
    manifest_file = root / "manifest.json"
    if not manifest_file.exists():
        if root.is_dir() and any(root.iterdir()):
            held = ", ".join(sorted(p.name for p in root.iterdir())[:5])
            raise FileExistsError(f"{root}: not empty ({held}) and not a synthetic dataset (no manifest.json); "
                                  f"the generator writes only into an empty folder or one it wrote: use another "
                                  f"out_dir")
        return None
    try:
        manifest = json.loads(manifest_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileExistsError(f"{manifest_file}: not valid JSON ({e}); not a folder the synthetic generator "
                              f"wrote, so nothing in it is replaced: use another out_dir") from e
    if not isinstance(manifest, dict) or manifest.get("format") != "tcpnet-synthetic" or _files_written(manifest) is None:
        raise FileExistsError(f"{manifest_file}: not a tcpnet synthetic dataset manifest; nothing in {root} is "
                              f"replaced: use another out_dir")
    return manifest


def _claim_folder(root: Path, spec: SyntheticSpec, overwrite: bool) -> str:
    """What to do in ``root``: "reuse" (complete, same settings), "resume" (interrupted, same
    settings) or "write" (empty, or our files removed: ``overwrite``, or only the generator version
    changed). Files we did not write are never removed."""
    manifest = _read_manifest(root)
    if manifest is None:
        return "write"
    old = {k: v for k, v in manifest.items() if k not in _NOT_SETTINGS}
    settings = spec.settings()
    if old == settings and not overwrite:
        complete = manifest.get("complete") and all((root / f).exists() for f in _LIST_FILES)
        return "reuse" if complete else "resume"  # resume: interrupted, keep the videos already written
    stale = old.get("generator_version") != GENERATOR_VERSION and _drop_codec(old) == _drop_codec(settings)
    if old != settings and not (overwrite or stale):
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise OtherSettingsError(f"{root}: holds a synthetic dataset with different settings (differs in "
                                 f"{diff}); pass overwrite=True (tcpnet synth --overwrite) to replace it, or use "
                                 f"another out_dir")
    if stale and not overwrite:  # our own cache, by another generator version (1: P/B frames leaked the order)
        logger.warning("%s: synthetic dataset of generator version %s; regenerating with version %d",
                       root, old.get("generator_version"), GENERATOR_VERSION)
    _remove_ours(root, _files_written(manifest))
    return "write"


def _plan_videos(root: Path, spec: SyntheticSpec, resume: bool) -> tuple[list[dict[str, Any]], list[tuple]]:
    """Every video's row (path, split, label, class name, parameters), in list order, and the render
    jobs of those still to write (all, unless ``resume`` keeps the ones on disk)."""
    rows, jobs = [], []
    for split_id, split in enumerate(SPLITS):
        per_class = spec.train_per_class if split == "train" else spec.val_per_class
        for label, name in enumerate(spec.classes):
            for i in range(per_class):
                rng = np.random.default_rng([int(spec.seed), split_id, label, i])
                p = sample_params(rng, label, num_frames=spec.num_frames, size=spec.size, noise_std=spec.noise_std)
                rel = _video_path(split, name, i)
                rows.append({"path": rel, "split": split, "label": label, "class_name": name, "params": p.to_dict()})
                if not (resume and (root / rel).exists()):
                    jobs.append((p.to_dict(), str(root / rel), spec.fps, int(spec.qp), spec.preset))
    return rows, jobs


def _render_all(jobs: Sequence[tuple], workers: Optional[int], progress: bool) -> None:
    """Render and encode every job, on up to ``workers`` processes (default: 2), with a progress bar."""
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    parallel = workers > 1 and len(jobs) >= 8
    for folder in sorted({os.path.dirname(job[1]) for job in jobs}):
        os.makedirs(folder, exist_ok=True)
    bar = tqdm(total=len(jobs), desc="synthetic videos", unit="video", disable=not progress)
    if not parallel:
        for job in jobs:
            _render_and_write(job)
            bar.update()
    else:
        with process_pool(workers, mp_context()) as ex:
            for _ in ex.map(_render_and_write, jobs, chunksize=4):
                bar.update()
    bar.close()


def _write_manifest(root: Path, spec: SyntheticSpec, rows: Sequence[dict[str, Any]], **run: Any) -> None:
    """manifest.json: the settings, the files this generator writes there, and ``run`` (complete,
    seconds). Written whole or not at all (a temporary file renamed), so a manifest of ours is never
    unreadable: an unreadable one is someone else's."""
    files = [r["path"] for r in rows] + list(_LIST_FILES)
    part = root / "manifest.json.part"
    part.write_text(json.dumps({**spec.settings(), **run, "files": files}, indent=1) + "\n")
    os.replace(part, root / "manifest.json")


def _write_lists(root: Path, spec: SyntheticSpec, rows: Sequence[dict[str, Any]]) -> None:
    """classes.txt, train.txt / val.txt (TSN lists) and params.jsonl."""
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in spec.classes))
    for split in SPLITS:
        lines = [f"{r['path']} {spec.num_frames} {r['label']}\n" for r in rows if r["split"] == split]
        (root / f"{split}.txt").write_text("".join(lines))
    with open(root / "params.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def make_synthetic_dataset(out_dir: Union[str, os.PathLike], spec: Optional[SyntheticSpec] = None, *,
                           overwrite: bool = False, workers: Optional[int] = None, progress: bool = True,
                           **settings: Any) -> SyntheticDataset:
    """Generate the synthetic order-dependent dataset ``spec`` (or ``SyntheticSpec(**settings)``) in
    ``out_dir``, or reuse it if a complete one with the same settings is there; see the module
    docstring for the layout and classes. Only an empty folder, or one this generator wrote, is
    written to: a folder with other files is a ``FileExistsError``; our dataset of other settings an
    :class:`OtherSettingsError` unless ``overwrite``, which removes only the files its manifest lists."""
    t0 = time.perf_counter()
    if spec is None:
        spec = SyntheticSpec(**settings)
    elif settings:
        raise TypeError(f"make_synthetic_dataset: pass a SyntheticSpec or settings, not both ({sorted(settings)})")
    root = Path(out_dir)
    files = dict(train_list=root / "train.txt", val_list=root / "val.txt", classes_file=root / "classes.txt",
                 params_file=root / "params.jsonl", manifest_file=root / "manifest.json")
    state = _claim_folder(root, spec, overwrite)
    if state == "reuse":
        logger.info("synthetic dataset at %s already exists with the same settings: reusing it", root)
        return SyntheticDataset(root=root, **files, class_names=list(spec.classes), num_videos=spec.counts(),
                                reused=True, seconds=time.perf_counter() - t0)
    rows, jobs = _plan_videos(root, spec, resume=state == "resume")
    root.mkdir(parents=True, exist_ok=True)
    _write_manifest(root, spec, rows, complete=False)
    logger.info("generating %d synthetic videos in %s (%d kept)", len(jobs), root, len(rows) - len(jobs))
    _render_all(jobs, workers, progress)
    _write_lists(root, spec, rows)
    seconds = time.perf_counter() - t0
    _write_manifest(root, spec, rows, complete=True, seconds=round(seconds, 2))
    logger.info("synthetic dataset written to %s in %.1f s", root, seconds)
    return SyntheticDataset(root=root, **files, class_names=list(spec.classes), num_videos=spec.counts(),
                            reused=False, seconds=seconds)
