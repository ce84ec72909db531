"""Mixup and CutMix for clip batches: a batch transform that returns the mixed clips and soft
targets. Accuracy is still measured against the hard labels, the loss against the soft ones."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["MixupCutmix"]


class MixupCutmix:
    """Mix each clip with the batch's clips in reverse order (timm's pairing), ``lam ~ Beta(a, a)``.

    mixup: ``x = lam * x + (1 - lam) * x.flip(0)``. cutmix: one box, the same in every frame,
    of area ``1 - lam`` from the flipped batch, with ``lam`` corrected to the box's true area.
    With both alphas set, each batch uses one of them with probability ``switch_prob`` for
    cutmix. Targets become ``lam * onehot(y) + (1 - lam) * onehot(y.flip(0))``. Randomness comes from torch's global generator, which the training loop
    seeds per epoch, so resumed runs draw the same boxes and weights.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 switch_prob: float = 0.5) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError("MixupCutmix needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.num_classes = num_classes
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.switch_prob = switch_prob

    def _beta(self, alpha: float) -> float:
        a = torch.tensor(alpha, dtype=torch.float64)
        return float(torch.distributions.Beta(a, a).sample())

    def _choose(self) -> Tuple[str, float]:
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = float(torch.rand(())) < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        kind = "cutmix" if use_cutmix else "mixup"
        return kind, self._beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha)

    @staticmethod
    def _box(h: int, w: int, lam: float) -> Tuple[int, int, int, int]:
        """A box of area ``(1 - lam) * h * w`` (clipped at the borders), centred uniformly."""
        ratio = math.sqrt(1.0 - lam)
        bh, bw = int(h * ratio), int(w * ratio)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
        return y0, y1, x0, x1

    def soft_targets(self, targets: torch.Tensor, lam: float) -> torch.Tensor:
        one_hot = F.one_hot(targets.long(), self.num_classes).float()
        return lam * one_hot + (1.0 - lam) * one_hot.flip(0)

    def __call__(self, clips: torch.Tensor, targets: torch.Tensor,
                 lam: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) clips and (B,) labels -> mixed clips and (B, K) soft targets."""
        if targets.dim() != 1:
            raise ValueError("mixup/cutmix need single-label targets (B,); multi-label data is not supported")
        kind, drawn = self._choose()
        lam = drawn if lam is None else lam
        if kind == "mixup":
            mixed = clips * lam + clips.flip(0) * (1.0 - lam)
        else:
            h, w = clips.shape[-2:]
            y0, y1, x0, x1 = self._box(h, w, lam)
            mixed = clips.clone()
            mixed[..., y0:y1, x0:x1] = clips.flip(0)[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        return mixed, self.soft_targets(targets, lam)
