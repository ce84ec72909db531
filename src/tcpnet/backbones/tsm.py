"""TSM temporal shift (SPEC §2.4) as a parameter-free op, plus the clip-shape check shared by
all temporal modules. Being parameter-free, it leaves torchvision's state-dict keys unchanged."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

SHIFT_PLACES = ("blockres", "block")


def check_clips(x: torch.Tensor, num_segments: int, where: str) -> int:
    """Return the number of clips N in a frame batch of N*T rows, or raise if it is not whole."""
    nt = x.shape[0]
    if num_segments < 1:
        raise ValueError(f"{where}: num_segments must be >= 1, got {num_segments}")
    if nt % num_segments != 0:
        raise ValueError(
            f"{where}: got a batch of {nt} frames, which is not a whole number of clips of "
            f"num_segments={num_segments} frames; frames must come as whole clips in "
            f"video-major order (row n*T + t is frame t of clip n)"
        )
    return nt // num_segments


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


class TemporalShift(nn.Module):
    """Module form of :func:`temporal_shift` (no parameters, no state-dict keys)."""

    def __init__(self, num_segments: int = 8, shift_div: int = 8) -> None:
        super().__init__()
        if shift_div < 1:
            raise ValueError(f"TemporalShift: shift_div must be >= 1, got {shift_div}")
        self.num_segments = num_segments
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
                shift_div: int) -> Optional["TemporalShift"]:
    """The shift module for block ``block_index`` of a stage, or None: 'block' shifts every
    block, 'blockres' every ``n_round``-th one (TSM's placement, SPEC §2.4)."""
    if place == "block" or (place == "blockres" and block_index % n_round == 0):
        return TemporalShift(num_segments, shift_div)
    return None


def set_num_segments(module: nn.Module, num_segments: int) -> None:
    """Set ``num_segments`` on every temporal submodule of ``module`` (those that carry it)."""
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    for m in module.modules():
        if m is not module and "num_segments" in vars(m):
            m.num_segments = num_segments
