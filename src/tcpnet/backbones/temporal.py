"""Clip length T inside a frames-layout backbone: the modules that mix frames hold T read-only,
and only the owning :class:`~tcpnet.models.Recognizer` changes it (``set_num_segments``)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["TemporalModule", "check_clips", "check_num_segments", "assign_num_segments"]


def check_num_segments(num_segments: int) -> int:
    """Return ``num_segments`` as an int >= 1, or raise ValueError."""
    t = int(num_segments)
    if t < 1 or t != num_segments:
        raise ValueError(f"num_segments must be an integer >= 1, got {num_segments!r}")
    return t


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


class TemporalModule(nn.Module):
    """A module that needs T (it mixes the frames of each clip, or holds modules that do).

    Subclasses store ``self._num_segments = check_num_segments(T)`` in ``__init__``. The public
    ``num_segments`` is read-only: assigning it raises, because a T changed below the model
    would let clips of the old length through with frames mixed across clip boundaries.
    """

    _num_segments: int

    @property
    def num_segments(self) -> int:
        """Frames per clip this module is set for."""
        return self._num_segments

    @num_segments.setter
    def num_segments(self, value: int) -> None:
        raise AttributeError(
            f"{type(self).__name__}.num_segments is read-only: T is owned by the model; call "
            f"model.set_num_segments({value!r}) on the Recognizer, which updates every temporal "
            "module and checks the head")


def assign_num_segments(module: nn.Module, num_segments: int, *, owner: object = None) -> None:
    """Set T on ``module`` and every :class:`TemporalModule` inside it. A backbone that belongs
    to a Recognizer holds that model's token (``_t_owner``) and accepts T only with it: set from
    anywhere else, the backbone's T would silently differ from the model's (logits change, no
    error). Use ``model.set_num_segments(T)``."""
    held = getattr(module, "_t_owner", None)
    if held is not None and held is not owner:
        raise AttributeError(f"the T of this {type(module).__name__} belongs to its model: call "
                             f"model.set_num_segments({num_segments!r}) on the Recognizer instead")
    t = check_num_segments(num_segments)
    for m in module.modules():
        if isinstance(m, TemporalModule):
            m._num_segments = t
