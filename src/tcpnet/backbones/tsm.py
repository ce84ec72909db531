"""TSM temporal shift as a parameter-free op. Being parameter-free, it leaves torchvision's
state-dict keys unchanged, so ImageNet ResNet weights load into TSM models as they are."""
from __future__ import annotations

from typing import Optional

import torch

from tcpnet.backbones.temporal import TemporalModule, check_clips, check_num_segments

__all__ = ["SHIFT_PLACES", "temporal_shift", "TemporalShift", "check_shift_place", "shift_round",
           "block_shift"]

SHIFT_PLACES = ("blockres", "block")


def temporal_shift(x: torch.Tensor, num_segments: int, shift_div: int = 8) -> torch.Tensor:
    """Shift 1/shift_div of the channels one frame back and 1/shift_div one frame forward.

    With ``fold = C // shift_div``: channels ``[0, fold)`` take frame ``t+1`` (zero for the last
    frame), channels ``[fold, 2*fold)`` take frame ``t-1`` (zero for the first), the rest stay.
    Frames never mix across clips. ``x`` is ``(N*T, C, H, W)``, video-major.
    """
    check_clips(x, num_segments, "temporal_shift")
    nt, c, h, w = x.shape
    v = x.view(-1, num_segments, c, h, w)
    fold = c // shift_div
    zero = v.new_zeros(v.shape[0], 1, fold, h, w)
    from_next = torch.cat([v[:, 1:, :fold], zero], dim=1)
    from_prev = torch.cat([zero, v[:, :-1, fold:2 * fold]], dim=1)
    out = torch.cat([from_next, from_prev, v[:, :, 2 * fold:]], dim=2)
    return out.reshape(nt, c, h, w)


class TemporalShift(TemporalModule):
    """Module form of :func:`temporal_shift` (no parameters, no state-dict keys)."""

    def __init__(self, num_segments: int = 8, shift_div: int = 8) -> None:
        super().__init__()
        if shift_div < 1:
            raise ValueError(f"TemporalShift: shift_div must be >= 1, got {shift_div}")
        self._num_segments = check_num_segments(num_segments)
        self.shift_div = shift_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_shift(x, self.num_segments, self.shift_div)

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, shift_div={self.shift_div}"


def check_shift_place(place: Optional[str]) -> Optional[str]:
    """Validate the ``temporal_shift`` option (None, 'blockres' or 'block')."""
    if place is not None and place not in SHIFT_PLACES:
        raise ValueError(f"temporal_shift must be None or one of {SHIFT_PLACES}, got {place!r}")
    return place


def shift_round(layer3_blocks: int) -> int:
    """TSM 'blockres' shifts every block when layer3 is short, every other one when it has >= 23."""
    return 2 if layer3_blocks >= 23 else 1


def block_shift(place: Optional[str], block_index: int, n_round: int, num_segments: int,
                shift_div: int) -> Optional[TemporalShift]:
    """The shift module for block ``block_index`` of a stage, or None: 'block' shifts every
    block, 'blockres' every ``n_round``-th one (TSM's placement)."""
    if place == "block" or (place == "blockres" and block_index % n_round == 0):
        return TemporalShift(num_segments, shift_div)
    return None
