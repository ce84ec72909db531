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
    out_dir/manifest.json                              seed and settings; a matching, complete
                                                       manifest means "already generated: reuse"

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
import shutil
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


def _drop_codec(settings: dict[str, Any]) -> dict[str, Any]:
    """Manifest settings without the generator version and coding fields (which change with it)."""
    return {k: v for k, v in settings.items() if k not in _CODEC_KEYS}


def make_synthetic_dataset(
    out_dir: Union[str, os.PathLike],
    seed: int = 0,
    num_classes: int = 8,
    train_per_class: int = 60,
    val_per_class: int = 20,
    num_frames: int = 32,
    size: int = 112,
    fps: int = 16,
    classes: Optional[Sequence[str]] = None,
    overwrite: bool = False,
    *,
    noise_std: float = 6.0,
    qp: int = QP,
    preset: str = PRESET,
    workers: Optional[int] = None,
    progress: bool = True,
) -> SyntheticDataset:
    """Generate the synthetic order-dependent dataset in ``out_dir`` (or reuse it if a complete one
    with the same settings is there); see the module docstring for the layout and classes.
    Videos are intra-only H.264 at constant quantiser ``qp`` (see ``write_clip``). A folder that
    holds a dataset of other settings, or an unreadable manifest, is a ``FileExistsError`` unless
    ``overwrite``."""
    t0 = time.perf_counter()
    _check_num_classes(num_classes)
    names = _check_class_names(classes if classes is not None else default_class_names(num_classes),
                               num_classes)
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and >= 16 (yuv420p), got {size}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if train_per_class < 0 or val_per_class < 0:
        raise ValueError("train_per_class and val_per_class must be >= 0")
    root = Path(out_dir)
    settings = {
        "format": "tcpnet-synthetic", "generator_version": GENERATOR_VERSION, "seed": int(seed),
        "num_classes": num_classes, "classes": names, "train_per_class": int(train_per_class),
        "val_per_class": int(val_per_class), "num_frames": int(num_frames), "size": int(size),
        "fps": int(fps), "noise_std": float(noise_std), "codec": "libx264", "pix_fmt": "yuv420p",
        "coding": "intra-only", "gop": 1, "qp": int(qp), "preset": preset,
        "list_format": "<path relative to root> <num_frames> <label>",
    }
    manifest_file = root / "manifest.json"
    files = dict(train_list=root / "train.txt", val_list=root / "val.txt",
                 classes_file=root / "classes.txt", params_file=root / "params.jsonl",
                 manifest_file=manifest_file)
    counts = {"train": train_per_class * num_classes, "val": val_per_class * num_classes}

    resume = False
    if manifest_file.exists() and not overwrite:
        try:
            old = json.loads(manifest_file.read_text())
        except json.JSONDecodeError as e:  # FileExistsError: a folder that holds something else
            raise FileExistsError(f"{manifest_file}: not valid JSON ({e}); pass overwrite=True "
                                  f"(tcpnet synth --overwrite) to regenerate") from e
        old_settings = {k: v for k, v in old.items() if k not in ("complete", "seconds")}
        stale = old.get("format") == settings["format"] and old.get("generator_version") != GENERATOR_VERSION
        if stale and _drop_codec(old_settings) == _drop_codec(settings):
            # Same dataset request, written by another generator version (e.g. 1: P/B-frame coding
            # that leaked the order): our own cache, outdated -> regenerate it.
            logger.warning("%s: synthetic dataset of generator version %s; regenerating with version %d",
                           root, old.get("generator_version"), GENERATOR_VERSION)
            overwrite = True
        elif old_settings != settings:
            diff = sorted(k for k in set(old_settings) | set(settings) if old_settings.get(k) != settings.get(k))
            raise FileExistsError(f"{root}: holds a synthetic dataset with different settings "
                                  f"(differs in {diff}); pass overwrite=True (tcpnet synth --overwrite) "
                                  f"or use another out_dir")
        elif old.get("complete") and all(p.exists() for p in files.values()):
            logger.info("synthetic dataset at %s already exists with the same settings: reusing it", root)
            return SyntheticDataset(root=root, **files, class_names=names, num_videos=counts, reused=True,
                                    seconds=time.perf_counter() - t0)
        else:
            resume = True  # same settings, interrupted: keep the videos already written
    if overwrite:
        for p in files.values():
            p.unlink(missing_ok=True)
        if (root / "videos").exists():
            shutil.rmtree(root / "videos")
    root.mkdir(parents=True, exist_ok=True)
    manifest_file.write_text(json.dumps({**settings, "complete": False}, indent=1) + "\n")

    # Parameters of every video, in list order.
    rows, jobs = [], []
    for split_id, split in enumerate(SPLITS):
        per_class = train_per_class if split == "train" else val_per_class
        for label, name in enumerate(names):
            (root / "videos" / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([int(seed), split_id, label, i])
                p = sample_params(rng, label, num_frames=num_frames, size=size, noise_std=noise_std)
                rel = f"videos/{split}/{name}/{i:05d}.mp4"
                rows.append({"path": rel, "split": split, "label": label, "class_name": name,
                             "params": p.to_dict()})
                if not (resume and (root / rel).exists()):
                    jobs.append((p.to_dict(), str(root / rel), fps, int(qp), preset))

    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    logger.info("generating %d synthetic videos in %s (%d skipped, workers=%d)", len(jobs), root,
                len(rows) - len(jobs), workers)
    parallel = workers > 1 and len(jobs) >= 8
    ctx = mp_context() if parallel else None
    bar = tqdm(total=len(jobs), desc="synthetic videos", unit="video", disable=not progress)
    if not parallel:
        for job in jobs:
            _render_and_write(job)
            bar.update()
    else:
        with process_pool(workers, ctx) as ex:
            for _ in ex.map(_render_and_write, jobs, chunksize=4):
                bar.update()
    bar.close()

    (root / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    for split in SPLITS:
        lines = [f"{r['path']} {num_frames} {r['label']}\n" for r in rows if r["split"] == split]
        (root / f"{split}.txt").write_text("".join(lines))
    with open(root / "params.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    seconds = time.perf_counter() - t0
    manifest_file.write_text(json.dumps({**settings, "complete": True, "seconds": round(seconds, 2)},
                                        indent=1) + "\n")
    logger.info("synthetic dataset written to %s in %.1f s", root, seconds)
    return SyntheticDataset(root=root, **files, class_names=names, num_videos=counts, reused=False,
                            seconds=seconds)
