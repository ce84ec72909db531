"""VideoMAE ViT-S/16 and ViT-B/16 (Tong et al., NeurIPS 2022) as ``"video"`` layout backbones with
the parameter names of the official ``modeling_finetune.py`` (MCG-NJU/VideoMAE), so its
fine-tuned and pre-trained files load as they are (the key map is in
:mod:`tcpnet.checkpoints.videomae`).

The network: a (tubelet, 16, 16) Conv3d cuts a clip into ``T' x h x w`` patch tokens
(``T' = T / tubelet``, ``h = H / 16``), a fixed sinusoidal table over the flat token index is
added, and pre-norm transformer blocks follow (attention whose ``qkv`` has no bias of its own
but ``q_bias`` and ``v_bias`` parameters, the key bias being zero; optional layer scale
``gamma_1``/``gamma_2`` when ``init_values > 0``; stochastic depth growing linearly to
``drop_path_rate``). The backbone returns the last block's tokens as maps
``(B*T', C, h, w)``, video-major, in channels-last memory (a free view of the tokens).

Where the final norm goes: with mean pooling (every published VideoMAE fine-tuning) the
official model's ``norm`` after the blocks is an identity and its ``fc_norm`` LayerNorm is
applied to the token mean. So no norm belongs to the backbone: the pooling head that
reproduces VideoMAE (``mean_norm``, :mod:`tcpnet.heads.mean_norm`) holds ``fc_norm``, and TCP
receives the un-normalised last-block tokens, as mean pooling does.

Class token: VideoMAE has none; every token is a patch, so the reshape to maps is exact. A
token backbone that has one (or distillation/register tokens) must drop them before the
reshape, since they have no place on the ``T' x h x w`` grid; a head that wants the class
token's vector is then a different contract, not a pooling head over maps.

Dropout inside the blocks (``drop_rate``, ``attn_drop_rate``) is 0 in the official fine-tuning
recipes and is not provided; the position table follows the token count, so any crop that is a
multiple of 16 and any T that is a multiple of the tubelet run (the official model gives the
same numbers when built for that size).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tcpnet.backbones.base import VideoBackbone, init_transformer_weights
from tcpnet.backbones.registry import register_backbone
from tcpnet.input_config import InputConfig

__all__ = ["VIDEOMAE_INPUT", "DropPath", "Attention", "Mlp", "Block", "PatchEmbed", "VideoMAEViT",
           "sinusoid_table", "videomae_vit_small", "videomae_vit_base"]

# VideoMAE's Kinetics pipeline: ImageNet mean/std on 0-1 pixels, shorter side 224 at test time,
# 224 crops, 16-frame clips (sampled every 4th frame in the official recipe).
VIDEOMAE_INPUT = InputConfig(crop_size=224, scale_size=224, num_segments=16)
LAYER_NORM_EPS = 1e-6  # the official factories' norm_layer


def sinusoid_table(num_positions: int, dim: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """The fixed (1, N, C) position table: position ``n``, channel ``j`` holds sin (j even) or
    cos (j odd) of ``n / 10000^(2 floor(j/2) / C)``; computed in float64, returned float32."""
    f64 = dict(dtype=torch.float64, device=device)
    pos = torch.arange(num_positions, **f64).unsqueeze(1)
    exponent = 2 * torch.div(torch.arange(dim, **f64), 2, rounding_mode="floor") / dim
    angle = pos / torch.pow(torch.tensor(10000.0, **f64), exponent)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32).unsqueeze(0)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random ``p`` of the samples and
    scale the others by ``1/(1-p)``; the identity in eval mode or when ``p == 0``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: drop probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's biases: ``qkv`` (no bias) plus learned
    ``q_bias`` and ``v_bias`` (the key bias is fixed at zero), then ``proj``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: embed dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias: Optional[nn.Parameter] = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias: Optional[nn.Parameter] = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, N, C); scaled dot-product attention with scale head_dim^-0.5."""
        b, n, c = x.shape
        bias = None
        if self.q_bias is not None and self.v_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Sequential):
    """``fc1`` -> GELU (exact) -> ``fc2``, hidden width ``mlp_ratio * dim``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)


class Block(nn.Module):
    """Pre-norm transformer block ``x + drop_path(gamma_1 * attn(norm1(x)))``, then the same with
    ``mlp``/``norm2``/``gamma_2``; the gammas (layer scale) exist only when ``init_values > 0``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1: Optional[nn.Parameter] = None
        self.gamma_2: Optional[nn.Parameter] = None
        if init_values > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + self.drop_path(a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.mlp(self.norm2(x))
        return x + self.drop_path(m if self.gamma_2 is None else self.gamma_2 * m)


class PatchEmbed(nn.Module):
    """Tubelet embedding: ``proj``, a Conv3d with kernel = stride = (tubelet, patch, patch)."""

    def __init__(self, embed_dim: int, patch_size: int = 16, tubelet_size: int = 2, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        size = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=size, stride=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, C, T', h, w)."""
        _, _, t, h, w = x.shape
        if t % self.tubelet_size or h % self.patch_size or w % self.patch_size:
            raise ValueError(f"PatchEmbed: clip (T, H, W) = ({t}, {h}, {w}) must be a multiple of "
                             f"(tubelet, patch, patch) = ({self.tubelet_size}, {self.patch_size}, "
                             f"{self.patch_size})")
        return self.proj(x)


class VideoMAEViT(VideoBackbone):
    """VideoMAE's ViT encoder without its pooling and classifier:
    (B, 3, T, H, W) -> (B*T', C, H/patch, W/patch) with ``T' = T / tubelet_size``.

    Keys as the official ``VisionTransformer``: ``patch_embed.proj.*``, ``blocks.<i>.{norm1,
    attn.{q_bias,v_bias,qkv,proj},norm2,mlp.{fc1,fc2},gamma_1,gamma_2}``. MLP ratio 4 and the
    q/v biases as in every released VideoMAE model. The position table is not a parameter (nor
    in the official state dict): it is rebuilt for each token count.
    """

    layout = "video"

    def __init__(self, embed_dim: int = 768, depth: int = 12, num_heads: int = 12, patch_size: int = 16,
                 tubelet_size: int = 2, init_values: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.num_features = self.embed_dim = embed_dim
        self.tubelet_size = tubelet_size
        self.patch_embed = PatchEmbed(embed_dim, patch_size, tubelet_size)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # 0 -> rate, linear
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=4.0, qkv_bias=True, init_values=init_values, drop_path=rate)
            for rate in rates)
        self.init_weights()

    def init_weights(self) -> None:
        """The official initialisation: every Linear normal(std 0.02) with zero bias, LayerNorms
        1/0, the patch Conv3d PyTorch's default, attention biases and gammas as built. (The
        official truncated normal cuts at +-2, i.e. 100 std, so it never truncates: the same
        distribution as ``normal_``, which is twice as fast on ViT-B's 85M weights.)"""
        init_transformer_weights(self)

    def output_segments(self, num_segments: int) -> int:
        """T' = T / tubelet_size (16 -> 8); T must be a multiple of the tubelet."""
        t = int(num_segments)
        if t < self.tubelet_size or t % self.tubelet_size:
            raise ValueError(f"{type(self).__name__}: num_segments={t} must be a positive multiple "
                             f"of the tubelet size {self.tubelet_size}")
        return t // self.tubelet_size

    def layer_ids(self) -> Dict[str, int]:
        """Layer-wise lr decay as in BEiT/VideoMAE fine-tuning: the patch embedding is layer 0,
        block i is layer i + 1 (the head and classifier come after, at the full rate)."""
        return {name: int(name.split(".")[1]) + 1 if name.startswith("blocks.") else 0
                for name, _ in self.named_parameters()}

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> last block's tokens (B, T'*h*w, C), in (t, y, x) order."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        # A few element-wise kernels over N x C, rebuilt per call: no state to move, cast or export.
        tokens = tokens + sinusoid_table(tokens.shape[1], self.embed_dim, tokens.device).to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) clips -> (B*T', C, h, w) maps, row ``b*T' + t``, channels-last memory."""
        b, _, t, h, w = x.shape
        t_out = self.output_segments(t)
        grid_h, grid_w = h // self.patch_embed.patch_size, w // self.patch_embed.patch_size
        tokens = self.forward_tokens(x)
        return tokens.reshape(b * t_out, grid_h, grid_w, self.embed_dim).permute(0, 3, 1, 2)


def _create(embed_dim: int, num_heads: int, drop_path_rate: float, init_values: float) -> VideoMAEViT:
    return VideoMAEViT(embed_dim=embed_dim, depth=12, num_heads=num_heads,
                       init_values=init_values, drop_path_rate=drop_path_rate)


@register_backbone(input_config=VIDEOMAE_INPUT)
def videomae_vit_small(drop_path_rate: float = 0.0, init_values: float = 0.0) -> VideoMAEViT:
    """VideoMAE ViT-S/16 (384 wide, 12 blocks, 6 heads, tubelet 2): official ``vit_small_patch16_224``.
    ``drop_path_rate``: stochastic depth at the last block (the official fine-tuning uses 0.1);
    ``init_values > 0`` adds layer scale (``gamma_1``/``gamma_2``), for files made with it."""
    return _create(384, 6, drop_path_rate, init_values)


@register_backbone(input_config=VIDEOMAE_INPUT)
def videomae_vit_base(drop_path_rate: float = 0.0, init_values: float = 0.0) -> VideoMAEViT:
    """VideoMAE ViT-B/16 (768 wide, 12 blocks, 12 heads, tubelet 2): official ``vit_base_patch16_224``.
    Options as :func:`videomae_vit_small`."""
    return _create(768, 12, drop_path_rate, init_values)

