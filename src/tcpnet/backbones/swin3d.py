"""Video Swin Transformer T/S/B (Liu et al., CVPR 2022) as ``"video"`` layout backbones with the
parameter names of mmaction2's ``SwinTransformer3D`` (``mmaction/models/backbones/swin.py``), so
mmaction2's and the original Video-Swin-Transformer repository's Kinetics files load as they are
(the key map is in :mod:`tcpnet.checkpoints.swin3d`).

The network: a (2, 4, 4) Conv3d cuts the clip into ``T/2 x H/4 x W/4`` patch tokens (the clip is
zero-padded up to a multiple of the patch first) followed by a LayerNorm; four stages of pre-norm
transformer blocks attend within non-overlapping 3-D windows ((8, 7, 7) for the Kinetics models),
every second block on windows shifted by half a window (a cyclic roll, with a mask that keeps
tokens from attending across the roll's seam); each attention adds a learned bias per head for
each relative (t, y, x) offset. Between stages a patch merging concatenates 2 x 2 neighbours
(LayerNorm, then a linear map 4C -> 2C), halving h and w but not T'. A final LayerNorm (``norm3``)
closes the last stage. The backbone returns its maps as ``(B*T', C, h, w)``, video-major, in
channels-last memory (a free view): 32 frames at 224 give T' = 16 on 7 x 7, C = 8 x embed_dim.

Small inputs follow the official rules, which the fixture test pins down: a map is zero-padded
(after ``norm1``) to a multiple of the window, the padded tokens taking part in attention
unmasked; where a map is no larger than the window along an axis, the window shrinks to the map
and the shift along it is dropped; and then the bias of the shrunk window's ``N`` tokens is read
from the top-left ``N x N`` corner of the full window's index table, as the official code does.
The shift mask adds -100 (not -inf) across the seam, also as the official code.

Dropout inside the blocks (``drop_rate``, ``attn_drop_rate``) is 0 in every published recipe and
is not provided; stochastic depth (``drop_path_rate``) grows linearly over all blocks.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from tcpnet.backbones.base import VideoBackbone, init_transformer_weights
from tcpnet.backbones.registry import register_backbone
from tcpnet.backbones.videomae import DropPath, Mlp
from tcpnet.input_config import InputConfig

__all__ = ["SWIN3D_INPUT", "WindowAttention3D", "SwinBlock3D", "PatchMerging", "SwinStage",
           "PatchEmbed3D", "SwinTransformer3D", "fit_window", "relative_position_index", "shift_mask",
           "swin3d_tiny", "swin3d_small", "swin3d_base"]

Size3 = Tuple[int, int, int]

# mmaction2's Kinetics-400 recipe: mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375) on
# 0-255 pixels, i.e. exactly ImageNet's mean/std on 0-1 pixels; shorter side 256 and a 224 centre
# crop for validation; 32-frame clips (every 2nd frame), so T' = 16.
SWIN3D_INPUT = InputConfig(crop_size=224, scale_size=256, num_segments=32)
LAYER_NORM_EPS = 1e-5  # mmcv's "LN": nn.LayerNorm's default
SHIFT_MASK_VALUE = -100.0  # the official mask value across a shifted window's seam


def fit_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> Tuple[Size3, Size3]:
    """The window and shift used on a map of ``size``: along an axis where the map is no larger
    than the window, the window becomes the map's size and the shift 0 (the official rule)."""
    fitted = [(s, 0) if s <= w else (w, sh) for s, w, sh in zip(size, window, shift)]
    return (fitted[0][0], fitted[1][0], fitted[2][0]), (fitted[0][1], fitted[1][1], fitted[2][1])


def window_partition(x: torch.Tensor, window: Size3) -> torch.Tensor:
    """(B, D, H, W, C), each of D, H, W a multiple of the window -> (B, nW, N, C), windows in
    (d, h, w) raster order and the N = wd*wh*ww tokens of each in (t, y, x) order."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.reshape(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, wd * wh * ww, c)


def window_merge(windows: torch.Tensor, window: Size3, size: Size3) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B, nW, N, C) -> (B, D, H, W, C) for ``size`` (D, H, W)."""
    b, c = windows.shape[0], windows.shape[-1]
    (wd, wh, ww), (d, h, w) = window, size
    x = windows.reshape(b, d // wd, h // wh, w // ww, wd, wh, ww, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)


def relative_position_index(window: Size3, device: Optional[torch.device] = None) -> torch.Tensor:
    """(N, N) int64 table, N = wd*wh*ww: for tokens i, j of a window, the row of the bias table
    that holds their offset ``(dt, dy, dx)``, i.e. ``(dt+wd-1)(2wh-1)(2ww-1) + (dy+wh-1)(2ww-1) + dx+ww-1``."""
    wd, wh, ww = window
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, device=device) for n in window), indexing="ij"))
    coords = grid.flatten(1)  # (3, N)
    offset = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 3): i minus j
    offset = offset + torch.tensor([wd - 1, wh - 1, ww - 1], device=device)
    strides = torch.tensor([(2 * wh - 1) * (2 * ww - 1), 2 * ww - 1, 1], device=device)
    return (offset * strides).sum(-1)


def _regions(padded: int, window: int, shift: int, device: Optional[torch.device]) -> torch.Tensor:
    """Region id along one axis of a cyclically shifted map: 0 before the last window, then 1
    and 2 for the two parts of the last window that the roll brought from different places."""
    ids = torch.zeros(padded, dtype=torch.long, device=device)
    if shift > 0:
        ids[padded - window:padded - shift] = 1
        ids[padded - shift:] = 2
    return ids


def shift_mask(padded: Size3, window: Size3, shift: Size3, device: Optional[torch.device] = None) -> torch.Tensor:
    """(nW, N, N) additive mask of a shifted window attention on a padded map: 0 between tokens
    of the same region, -100 between tokens the cyclic roll brought together from apart."""
    d, h, w = (_regions(p, win, s, device) for p, win, s in zip(padded, window, shift))
    ids = d[:, None, None] * 9 + h[None, :, None] * 3 + w[None, None, :]
    ids = window_partition(ids[None, ..., None], window)[0, ..., 0]  # (nW, N)
    same = ids[:, :, None] == ids[:, None, :]
    return torch.zeros(same.shape, device=device).masked_fill_(~same, SHIFT_MASK_VALUE)


class WindowAttention3D(nn.Module):
    """Multi-head self-attention within each window, with a learned bias per head for each
    relative offset: ``relative_position_bias_table`` ((2wd-1)(2wh-1)(2ww-1), heads), indexed by
    the ``relative_position_index`` buffer (N, N), a state-dict entry as in the official module."""

    def __init__(self, dim: int, window: Size3, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention3D: dim {dim} is not a multiple of num_heads {num_heads}")
        self.window, self.num_heads = tuple(window), num_heads
        rows = math.prod(2 * n - 1 for n in window)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self, n: int) -> torch.Tensor:
        """(heads, n, n) bias of the first ``n`` tokens of a window (all of them when n = N)."""
        index = self.relative_position_index[:n, :n].reshape(-1)
        return self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, nW, N, C) windows -> (B, nW, N, C); ``mask`` (nW, N, N) is added to the logits."""
        b, nw, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, nw, n, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)  # (3, B, nW, h, N, d)
        bias = self.position_bias(n).to(qkv.dtype)[None]  # (1, heads, N, N)
        # 4-D attention either way (what the fused kernels and the ONNX exporter take): windows in
        # the batch sharing one bias, or, with a mask, windows folded into the heads so that the
        # (nW, heads, N, N) bias + mask broadcasts over the clips instead of being copied per clip.
        if mask is None:
            q, k, v = qkv.reshape(3, b * nw, heads, n, -1).unbind(0)
        else:
            q, k, v = qkv.reshape(3, b, nw * heads, n, -1).unbind(0)
            bias = (bias + mask.to(qkv.dtype)[:, None]).reshape(1, nw * heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.reshape(b, nw, heads, n, -1).transpose(2, 3).reshape(b, nw, n, c))


class SwinBlock3D(nn.Module):
    """Pre-norm block on (B, D, H, W, C) maps: ``x + drop_path(W-MSA(norm1(x)))`` (shifted by
    ``shift`` when it is non-zero), then ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int, window: Size3, shift: Size3, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.window, self.shift = tuple(window), tuple(shift)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = WindowAttention3D(dim, self.window, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attend(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The attention branch: norm1, zero padding to whole windows, roll, window attention,
        and back. ``mask`` is the layer's shift mask (used only when this block shifts)."""
        size = tuple(x.shape[1:4])
        window, shift = fit_window(size, self.window, self.shift)
        pad = [(-s) % w for s, w in zip(size, window)]
        x = F.pad(self.norm1(x), (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        padded = tuple(x.shape[1:4])
        shifted = any(shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        x = window_merge(self.attn(window_partition(x, window), mask if shifted else None), window, padded)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :size[0], :size[1], :size[2]]

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attend(x, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """(B, D, H, W, C) -> (B, D, ceil(H/2), ceil(W/2), 2C): the 2 x 2 neighbours (odd sizes
    zero-padded) concatenated in the official order of offsets (dy, dx) = (0, 0), (1, 0), (0, 1),
    (1, 1), then ``norm``, ``reduction``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=LAYER_NORM_EPS)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, dy::2, dx::2] for dy, dx in ((0, 0), (1, 0), (0, 1), (1, 1))], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """One stage (the official ``BasicLayer``): ``blocks`` alternating plain and half-window
    shifted attention, then the optional ``downsample`` (:class:`PatchMerging`)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: Size3, drop_paths: Sequence[float],
                 downsample: bool) -> None:
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(n // 2 for n in self.window)
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, num_heads, self.window, self.shift if i % 2 else (0, 0, 0), drop_path=drop_paths[i])
            for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W, C) -> the same, or merged by ``downsample``."""
        size = tuple(x.shape[1:4])
        window, shift = fit_window(size, self.window, self.shift)
        mask = None
        if any(shift) and len(self.blocks) > 1:
            padded = tuple(math.ceil(s / w) * w for s, w in zip(size, window))
            mask = shift_mask(padded, window, shift, x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed3D(nn.Module):
    """``proj``: Conv3d with kernel = stride = patch, on the clip zero-padded to a multiple of
    the patch; then ``norm`` (LayerNorm, when built with ``patch_norm``). (B, 3, T, H, W) ->
    (B, T', H', W', C) channels-last maps."""

    def __init__(self, embed_dim: int, patch_size: Size3 = (2, 4, 4), patch_norm: bool = True) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = [(-s) % p for s, p in zip(x.shape[2:], self.patch_size)]
        x = self.proj(F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))).permute(0, 2, 3, 4, 1)
        return x if self.norm is None else self.norm(x)


class SwinTransformer3D(VideoBackbone):
    """Video Swin without its classifier: (B, 3, T, H, W) -> (B*T', C, h, w), T' = ceil(T/2),
    h = ceil(H/32) (for 4 stages), C = embed_dim * 2^(stages-1).

    Keys as mmaction2's ``SwinTransformer3D``: ``patch_embed.{proj,norm}.*``,
    ``layers.<i>.blocks.<j>.{norm1,attn.{relative_position_bias_table,relative_position_index,
    qkv,proj},norm2,mlp.{fc1,fc2}}.*``, ``layers.<i>.downsample.{norm,reduction}.*`` and the final
    norm ``norm<stages-1>`` (``norm3``). MLP ratio 4 and qkv biases as in every released model.
    """

    layout = "video"

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), patch_size: Size3 = (2, 4, 4),
                 window_size: Size3 = (8, 7, 7), patch_norm: bool = True, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"SwinTransformer3D: depths {tuple(depths)} and num_heads {tuple(num_heads)} "
                             "must be non-empty and of the same length")
        self.patch_embed = PatchEmbed3D(embed_dim, patch_size, patch_norm)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # 0 -> rate, linear
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(SwinStage(embed_dim * 2 ** i, depth, heads, window_size,
                                         rates[start:start + depth], downsample=i < len(depths) - 1))
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.final_norm_name = f"norm{len(depths) - 1}"  # mmaction2: the norm of the last out index
        self.add_module(self.final_norm_name, nn.LayerNorm(self.num_features, eps=LAYER_NORM_EPS))
        self.init_weights()

    def init_weights(self) -> None:
        """The official initialisation from scratch: every Linear and the bias tables normal with
        std 0.02 (the official truncation at +-2 is 100 std, so never reached), Linear biases 0,
        LayerNorms 1/0, the patch Conv3d PyTorch's default."""
        init_transformer_weights(self)
        for m in self.modules():
            if isinstance(m, WindowAttention3D):
                nn.init.normal_(m.relative_position_bias_table, std=0.02)

    @property
    def final_norm(self) -> nn.LayerNorm:
        return getattr(self, self.final_norm_name)

    def output_segments(self, num_segments: int) -> int:
        """T' = ceil(T / 2) for the (2, 4, 4) patch (32 -> 16); an odd T is zero-padded."""
        t = int(num_segments)
        if t < 1:
            raise ValueError(f"{type(self).__name__}: num_segments must be >= 1, got {t}")
        return -(-t // self.patch_embed.patch_size[0])

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> the final norm's (B, T', h, w, C) channels-last maps."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) clips -> (B*T', C, h, w) maps, row ``b*T' + t``, channels-last memory."""
        maps = self.forward_maps(x)
        b, t, h, w, c = maps.shape
        return maps.reshape(b * t, h, w, c).permute(0, 3, 1, 2)


def _create(embed_dim: int, depths: Tuple[int, ...], num_heads: Tuple[int, ...], drop_path_rate: float,
            window_size: Sequence[int]) -> SwinTransformer3D:
    return SwinTransformer3D(embed_dim=embed_dim, depths=depths, num_heads=num_heads,
                             window_size=tuple(window_size), drop_path_rate=drop_path_rate)


@register_backbone(input_config=SWIN3D_INPUT)
def swin3d_tiny(drop_path_rate: float = 0.0, window_size: Sequence[int] = (8, 7, 7)) -> SwinTransformer3D:
    """Video Swin-T (embed 96, depths 2-2-6-2, heads 3-6-12-24, patch (2, 4, 4)): mmaction2's
    ``arch='tiny'``. ``drop_path_rate``: stochastic depth at the last block (the K400 recipe uses
    0.1); ``window_size`` (8, 7, 7) as the released Kinetics models."""
    return _create(96, (2, 2, 6, 2), (3, 6, 12, 24), drop_path_rate, window_size)


@register_backbone(input_config=SWIN3D_INPUT)
def swin3d_small(drop_path_rate: float = 0.0, window_size: Sequence[int] = (8, 7, 7)) -> SwinTransformer3D:
    """Video Swin-S (embed 96, depths 2-2-18-2, heads 3-6-12-24): ``arch='small'`` (K400 recipe:
    ``drop_path_rate`` 0.2). Options as :func:`swin3d_tiny`."""
    return _create(96, (2, 2, 18, 2), (3, 6, 12, 24), drop_path_rate, window_size)


@register_backbone(input_config=SWIN3D_INPUT)
def swin3d_base(drop_path_rate: float = 0.0, window_size: Sequence[int] = (8, 7, 7)) -> SwinTransformer3D:
    """Video Swin-B (embed 128, depths 2-2-18-2, heads 4-8-16-32): ``arch='base'`` (K400 recipe:
    ``drop_path_rate`` 0.3). Options as :func:`swin3d_tiny`."""
    return _create(128, (2, 2, 18, 2), (4, 8, 16, 32), drop_path_rate, window_size)
