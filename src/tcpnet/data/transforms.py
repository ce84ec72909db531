"""Spatial transforms on uint8 clips, the same geometry for every frame (the published TSN/TSM pipeline).

Layout: a clip is a ``torch.uint8`` tensor ``(T, H, W, 3)`` as returned by
:func:`tcpnet.data.load_clip`; multi-view transforms add a leading view axis ``(V, T, h, w, 3)``.
Transforms are small composable callables ``t(clip, rng=None)`` (PyTorchVideo style); random
ones draw from the ``np.random.Generator`` passed in, never from global random state, so a
dataset can make every item reproducible. :func:`to_float` / :class:`Normalize` end a pipeline:
uint8 ``(..., T, H, W, 3)`` -> float32 ``(..., 3, T, H, W)`` with the model's
:class:`~tcpnet.input_config.InputConfig` (``(p * value_scale - mean[c]) / std[c]``).

Resizing (:func:`resize`) should reproduce PIL's ``Image.resize(BILINEAR)`` (what the authors
used). PIL's bilinear filter widens its support by the downscale factor (it antialiases), so a
plain bilinear interpolation (``F.interpolate(float, antialias=False)``, then round) matches it
only when upscaling. We therefore use torch's uint8 bilinear kernel with ``antialias=True`` by
default (``antialias=False`` is an option). Max / mean |ours - PIL| in grey levels, measured
(torch 2.13, Pillow 13) on a smooth sinusoid test image and on uniform noise (the worst case):

=================================  ==================  ==================  ==================
resize                             float, no antialias uint8, no antialias uint8, antialias
                                   smooth / noise      smooth / noise      (default)
=================================  ==================  ==================  ==================
crop 168 -> 224 (x1.33)            1/0.24  1/0.21      0/0     0/0         0/0     0/0
crop 192 -> 224 (x1.17)            1/0.19  1/0.22      1/0.008 2/0.077     1/0.008 2/0.077
crop 256 -> 224 (x0.875)           2/0.27  52/7.1      2/0.26  52/7.1      1/0.003 1/0.003
340x256 -> 224x224                 2/0.23  90/14.0     2/0.19  90/13.9     1/0.003 1/0.003
320x240 -> 341x256 (shorter side)  1/0.17  1/0.20      0/0     1/0.002     0/0     1/0.002
340x256 -> 297x224 (shorter side)  2/0.24  61/7.2      2/0.22  61/7.2      1/0.002 1/0.002
=================================  ==================  ==================  ==================

The uint8 kernel is also ~25x faster than the float path on CPU (8 frames 256² -> 224²:
~1 ms vs ~37 ms on 2 shared cores). On other devices :func:`resize` falls back to the float path.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from tcpnet.config import parse_views
from tcpnet.input_config import InputConfig

__all__ = [
    "ClipTransform",
    "Compose",
    "resize",
    "shorter_side_size",
    "ResizeShorterSide",
    "CenterCrop",
    "MultiScaleCrop",
    "RandomHorizontalFlip",
    "ThreeCrop",
    "FiveCrop",
    "TenCrop",
    "Normalize",
    "to_float",
    "normalize",
    "to_views",
    "fixed_crop_offsets",
    "multiscale_crop_sizes",
    "parse_views",
    "build_transform",
]


Size = Union[int, Tuple[int, int]]


def _hw(size: Size) -> Tuple[int, int]:
    """``size`` as (height, width): an int means a square."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _check_clip(clip: torch.Tensor, name: str, ndim: Sequence[int] = (4,)) -> None:
    if not isinstance(clip, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor clip (T, H, W, 3), got {type(clip).__name__}")
    if clip.dim() not in ndim or clip.shape[-1] != 3:
        want = " or ".join({4: "(T, H, W, 3)", 5: "(V, T, H, W, 3)"}[n] for n in ndim)
        raise ValueError(f"{name}: expected a clip of shape {want}, got {tuple(clip.shape)}")


def _rng(rng: Optional[np.random.Generator]) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


class ClipTransform:
    """Base class of our transforms: ``__call__(clip, rng=None)``; ``random`` says if it draws."""

    random: bool = False

    def __call__(self, clip: torch.Tensor, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(ClipTransform):
    """Apply transforms in order, handing the same ``rng`` to each of ours (plain callables get
    only the clip)."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)
        self.random = any(getattr(t, "random", False) for t in self.transforms)

    def __call__(self, clip: torch.Tensor, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        for t in self.transforms:
            clip = t(clip, rng) if isinstance(t, ClipTransform) else t(clip)
        return clip

    def __repr__(self) -> str:
        inner = ",\n".join(f"    {t!r}" for t in self.transforms)
        return f"Compose([\n{inner}\n])"


# --------------------------------------------------------------------------- resize


def resize(clip: torch.Tensor, size: Tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of a uint8 clip ``(..., H, W, 3)`` to ``size = (h, w)``, like PIL's
    ``Image.resize(BILINEAR)`` that the authors used (see the module docstring for numbers).

    On CPU this is torch's native uint8 kernel (``align_corners=False``; with ``antialias=True``
    the filter support widens with the downscale factor, as PIL's does). Elsewhere it
    interpolates in float32, rounds half-to-even and clamps to uint8. A same-size resize returns
    the input unchanged (as PIL and torchvision do).
    """
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize: target size must be positive, got {(h, w)}")
    if clip.dtype != torch.uint8:
        raise TypeError(f"resize: expected a uint8 clip, got {clip.dtype}")
    if tuple(clip.shape[-3:-1]) == (h, w):
        return clip
    lead = clip.shape[:-3]
    x = clip.reshape(-1, *clip.shape[-3:]).permute(0, 3, 1, 2)  # channels-last memory
    if x.device.type == "cpu":
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)
    else:
        x = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False,
                          antialias=antialias)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().reshape(*lead, h, w, 3)


def shorter_side_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """(h, w) after resizing the shorter side to ``size``, the longer to
    ``int(size * long / short)`` (torchvision ``Resize(int)`` rule)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


class ResizeShorterSide(ClipTransform):
    """Resize so the shorter side is ``size`` (the authors' ``GroupScale``; a no-op when it
    already is)."""

    def __init__(self, size: int, antialias: bool = True) -> None:
        self.size = int(size)
        self.antialias = bool(antialias)

    def __call__(self, clip: torch.Tensor, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        _check_clip(clip, "ResizeShorterSide", (4, 5))
        H, W = clip.shape[-3], clip.shape[-2]
        return resize(clip, shorter_side_size(H, W, self.size), self.antialias)


# --------------------------------------------------------------------------- crops


def _crop(clip: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    H, W = clip.shape[-3], clip.shape[-2]
    if top < 0 or left < 0 or top + h > H or left + w > W:
        raise ValueError(
            f"crop ({left}, {top}, {left + w}, {top + h}) (x0, y0, x1, y1) does not fit a {W}x{H} frame")
    return clip[..., top:top + h, left:left + w, :]


class CenterCrop(ClipTransform):
    """Centre crop with torchvision's rule ``top = round((H - h) / 2)``, ``left = round((W - w) / 2)``
    (Python ``round``, half-to-even: 455 wide, 224 crop -> left 116)."""

    def __init__(self, size: Size) -> None:
        self.size = size

    def __call__(self, clip: torch.Tensor, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        _check_clip(clip, "CenterCrop", (4, 5))
        h, w = _hw(self.size)
        H, W = clip.shape[-3], clip.shape[-2]
        return _crop(clip, int(round((H - h) / 2.0)), int(round((W - w) / 2.0)), h, w)


def fixed_crop_offsets(image_w: int, image_h: int, crop_w: int, crop_h: int,
                       more_fix_crop: bool = True) -> List[Tuple[int, int]]:
    """The authors' fixed crop offsets ``(x, y)``: with ``ws = (W - w)//4``, ``hs = (H - h)//4``,
    5 (corners, centre) or, with ``more_fix_crop``, 13 candidates in the published order."""
    ws, hs = (image_w - crop_w) // 4, (image_h - crop_h) // 4
    ret = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
    if more_fix_crop:
        ret += [(0, 2 * hs), (4 * ws, 2 * hs), (2 * ws, 4 * hs), (2 * ws, 0),
                (ws, hs), (3 * ws, hs), (ws, 3 * hs), (3 * ws, 3 * hs)]
    return ret


def multiscale_crop_sizes(image_w: int, image_h: int, input_size: Size = 224,
                          scales: Sequence[float] = (1, 0.875, 0.75, 0.66),
                          max_distort: int = 1) -> List[Tuple[int, int]]:
    """Candidate crop sizes ``(w, h)`` of the multi-scale crop, in the published order.

    ``c_i = int(min(W, H) * scale_i)``, snapped to the input size when within 3 px; pairs
    ``(w = c_j, h = c_i)`` with ``|i - j| <= max_distort``, ``i`` outer. Base 256, input 224:
    sizes [256, 224, 192, 168], 10 pairs.
    """
    in_h, in_w = _hw(input_size)
    base = min(image_w, image_h)
    crop_sizes = [int(base * s) for s in scales]
    crop_h = [in_h if abs(c - in_h) < 3 else c for c in crop_sizes]
    crop_w = [in_w if abs(c - in_w) < 3 else c for c in crop_sizes]
    return [(w, h) for i, h in enumerate(crop_h) for j, w in enumerate(crop_w)
            if abs(i - j) <= max_distort]


class MultiScaleCrop(ClipTransform):
    """The authors' ``GroupMultiScaleCrop`` (training): pick a crop size from
    :func:`multiscale_crop_sizes` and an offset from :func:`fixed_crop_offsets` (13 candidates;
    ``fix_crop=False`` draws uniform offsets instead), crop, and resize to ``size``."""

    random = True

    def __init__(self, size: Size = 224, scales: Sequence[float] = (1, 0.875, 0.75, 0.66),
                 max_distort: int = 1, fix_crop: bool = True, more_fix_crop: bool = True,
                 antialias: bool = True) -> None:
        self.size = size
        self.scales = tuple(float(s) for s in scales)
        self.max_distort = int(max_distort)
        self.fix_crop = bool(fix_crop)
        self.more_fix_crop = bool(more_fix_crop)
        self.antialias = bool(antialias)

    def sample_params(self, image_h: int, image_w: int,
                      rng: Optional[np.random.Generator] = None) -> Tuple[int, int, int, int]:
        """Draw ``(x, y, w, h)`` of the crop for a ``image_w x image_h`` frame."""
        rng = _rng(rng)
        pairs = multiscale_crop_sizes(image_w, image_h, self.size, self.scales, self.max_distort)
        w, h = pairs[int(rng.integers(len(pairs)))]
        if self.fix_crop:
            offsets = fixed_crop_offsets(image_w, image_h, w, h, self.more_fix_crop)
            x, y = offsets[int(rng.integers(len(offsets)))]
        else:
            x = int(rng.integers(0, image_w - w + 1))
            y = int(rng.integers(0, image_h - h + 1))
        return x, y, w, h

    def __call__(self, clip: torch.Tensor, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        _check_clip(clip, "MultiScaleCrop")
        x, y, w, h = self.sample_params(clip.shape[1], clip.shape[2], rng)
        return resize(_crop(clip, y, x, h, w), _hw(self.size), self.antialias)


class RandomHorizontalFlip(ClipTransform):
    """Mirror every frame left-right with probability ``p`` (one draw per clip).

    Leave it out (``build_transform(..., flip=False)``) for datasets whose labels depend on
    direction, e.g. Something-Something ("pushing left to right")."""

    random = True

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, clip: torch.Tensor, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        _check_clip(clip, "RandomHorizontalFlip", (4, 5))
        if _rng(rng).random() < self.p:
            return clip.flip(-2)
        return clip


class _MultiCrop(ClipTransform):
    """Crops at fixed offsets, stacked on a new leading view axis ``(V, T, h, w, 3)``; with
    ``flip`` each crop is followed by its mirrored copy."""

    def __init__(self, size: Size, flip: bool = False) -> None:
        self.size = size
        self.flip = bool(flip)

    def offsets(self, image_w: int, image_h: int, crop_w: int, crop_h: int) -> List[Tuple[int, int]]:
        raise NotImplementedError

    def __call__(self, clip: torch.Tensor, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        _check_clip(clip, type(self).__name__)
        h, w = _hw(self.size)
        views = []
        for x, y in self.offsets(clip.shape[2], clip.shape[1], w, h):
            crop = _crop(clip, y, x, h, w)
            views.append(crop)
            if self.flip:
                views.append(crop.flip(-2))
        return torch.stack(views)


class ThreeCrop(_MultiCrop):
    """The authors' full-resolution test crops (``GroupFullResSample``): with
    ``ws = (W - c)//4``, ``hs = (H - c)//4`` the crops at ``(0, 2hs)``, ``(4ws, 2hs)``,
    ``(2ws, 2hs)`` -- left, right, centre, in that order. On a landscape frame cropped to its
    height the three crops differ only horizontally; on a portrait frame they coincide."""

    def offsets(self, image_w: int, image_h: int, crop_w: int, crop_h: int) -> List[Tuple[int, int]]:
        ws, hs = (image_w - crop_w) // 4, (image_h - crop_h) // 4
        return [(0, 2 * hs), (4 * ws, 2 * hs), (2 * ws, 2 * hs)]


class FiveCrop(_MultiCrop):
    """The authors' ``GroupOverSample``: corners and centre ``(0,0), (4ws,0), (0,4hs), (4ws,4hs),
    (2ws,2hs)``."""

    def offsets(self, image_w: int, image_h: int, crop_w: int, crop_h: int) -> List[Tuple[int, int]]:
        return fixed_crop_offsets(image_w, image_h, crop_w, crop_h, more_fix_crop=False)


class TenCrop(FiveCrop):
    """Five crops, each followed by its mirrored copy (10 views)."""

    def __init__(self, size: Size) -> None:
        super().__init__(size, flip=True)

    def __repr__(self) -> str:
        return f"TenCrop(size={self.size!r})"


# --------------------------------------------------------------------------- to float


def normalize(x: torch.Tensor, config: InputConfig, channel_dim: int = -4) -> torch.Tensor:
    """``(x * value_scale - mean[c]) / std[c]`` in float32 for a channels-first tensor
    (``(3, T, H, W)``, ``(B, 3, T, H, W)``, ...; channels at ``channel_dim``).

    For ``value_scale == 1/255`` the division by 255 is done as a division, like the authors'
    ``ToTorchFormatTensor``, so the result is bit-identical to theirs; mean and std are
    float32. Works on any device (e.g. on a GPU batch of uint8 clips).
    """
    if x.shape[channel_dim] != 3:
        raise ValueError(f"normalize: expected 3 channels at dim {channel_dim}, got shape {tuple(x.shape)}")
    x = x.float()
    vs = float(config.value_scale)
    if abs(vs * 255.0 - 1.0) < 1e-12:
        x = x / 255.0
    elif vs != 1.0:
        x = x * vs
    shape = [1] * x.dim()
    shape[channel_dim] = 3
    mean = torch.tensor(config.mean, dtype=torch.float32, device=x.device).view(shape)
    std = torch.tensor(config.std, dtype=torch.float32, device=x.device).view(shape)
    return (x - mean) / std


def to_float(clip: torch.Tensor, config: InputConfig) -> torch.Tensor:
    """uint8 ``(..., T, H, W, 3)`` -> normalised float32 ``(..., 3, T, H, W)``."""
    if clip.dim() < 4 or clip.shape[-1] != 3:
        raise ValueError(f"to_float: expected (..., T, H, W, 3), got {tuple(clip.shape)}")
    return normalize(clip.movedim(-1, -4), config)


class Normalize(ClipTransform):
    """:func:`to_float` as a pipeline step."""

    def __init__(self, config: InputConfig) -> None:
        self.config = config

    def __call__(self, clip: torch.Tensor, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        return to_float(clip, self.config)


def to_views(clip: torch.Tensor, num_clips: int) -> torch.Tensor:
    """Split the frame axis of ``(T', H, W, C)`` or ``(V, T', H, W, C)`` (``T' = num_clips * T``,
    clip-major) into views: ``(V * num_clips, T, H, W, C)``, crop-major then clip. A single
    view comes back as ``(T, H, W, C)``."""
    if clip.dim() == 4:
        clip = clip.unsqueeze(0)
    if clip.dim() != 5:
        raise ValueError(f"to_views: expected (T, H, W, C) or (V, T, H, W, C), got {tuple(clip.shape)}")
    V, TT = clip.shape[:2]
    if TT % num_clips:
        raise ValueError(f"to_views: {TT} frames do not split into {num_clips} clips")
    out = clip.reshape(V * num_clips, TT // num_clips, *clip.shape[2:])
    return out[0] if out.shape[0] == 1 else out


# --------------------------------------------------------------------------- recipes


def build_transform(mode: str, config: InputConfig, num_crops: int = 1, flip: bool = True,
                    full_res: Optional[bool] = None, antialias: bool = True) -> Compose:
    """The published uint8 transform for ``mode`` (no float conversion; see :func:`to_float`).

    train: multi-scale crop to ``crop_size`` (+ random flip if ``flip``); val: resize shorter
    side to ``scale_size``, centre crop ``crop_size``; test: resize to ``scale_size`` then
    ``num_crops`` crops (1 centre, 3 full-res, 5, 10). ``full_res`` (default: true for 3 crops,
    as in the test scripts) makes the test crop ``scale_size`` instead of ``crop_size``.
    """
    if mode == "train":
        ts: List[Callable] = [MultiScaleCrop(config.crop_size, antialias=antialias)]
        if flip:
            ts.append(RandomHorizontalFlip())
        return Compose(ts)
    if mode == "val":
        return Compose([ResizeShorterSide(config.scale_size, antialias), CenterCrop(config.crop_size)])
    if mode != "test":
        raise ValueError(f"mode: expected 'train', 'val' or 'test', got {mode!r}")
    if full_res is None:
        full_res = num_crops == 3
    size = config.scale_size if full_res else config.crop_size
    crop = {1: CenterCrop, 3: ThreeCrop, 5: FiveCrop, 10: TenCrop}.get(num_crops)
    if crop is None:
        raise ValueError(f"num_crops must be 1, 3, 5 or 10, got {num_crops}")
    return Compose([ResizeShorterSide(config.scale_size, antialias), crop(size)])
