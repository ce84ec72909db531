"""Named running statistics of an epoch, kept on the device.

One float64 tensor holds every statistic (loss sum, hits, clips, clipped steps, ...), so adding
to them never syncs with the host; :meth:`RunningStats.read` is the one sync point. They are
saved in checkpoints by name, so adding a statistic is one name in the component that counts it.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch

__all__ = ["RunningStats", "CORE_STATS", "LEGACY_ORDER"]

# Counted by the loop itself: loss*clips, top-1 and top-5 hits, clips.
CORE_STATS = ("loss_sum", "top1_hits", "top5_hits", "clips")
# The positional order of the "epoch_sums" lists written by tcpnet before named statistics.
LEGACY_ORDER = ("loss_sum", "top1_hits", "top5_hits", "clips", "clipped_steps", "nonfinite_steps")


class RunningStats:
    """Sums ``name -> float64`` on ``device``; :meth:`add` never syncs, :meth:`read` does once."""

    def __init__(self, names: Iterable[str], device: Union[str, torch.device] = "cpu") -> None:
        self.names: List[str] = list(dict.fromkeys(names))
        self._index = {n: i for i, n in enumerate(self.names)}
        self.values = torch.zeros(len(self.names), dtype=torch.float64, device=device)

    def add(self, name: str, value: Union[float, torch.Tensor]) -> None:
        """``stats[name] += value`` on the device (a tensor value is not read by the host)."""
        i = self._index.get(name)
        if i is None:
            raise KeyError(f"statistic {name!r} is not declared; declared: {self.names}")
        if isinstance(value, torch.Tensor):
            self.values[i] += value.detach().to(self.values.dtype)
        else:
            self.values[i] += float(value)

    def read(self) -> Dict[str, float]:
        """The current sums on the host (a device sync)."""
        return dict(zip(self.names, self.values.tolist()))

    def reset(self) -> None:
        self.values.zero_()

    def state_dict(self) -> Dict[str, float]:
        return self.read()

    def load_state_dict(self, saved: Optional[Union[Mapping[str, float], Sequence[float]]]) -> List[str]:
        """Restore sums by name (a positional list is read in :data:`LEGACY_ORDER`); statistics the
        checkpoint lacks start at 0. Returns the names that were not in ``saved``."""
        self.reset()
        if saved is None:
            return list(self.names)
        if not isinstance(saved, Mapping):
            saved = dict(zip(LEGACY_ORDER, (float(v) for v in saved)))
        for name, value in saved.items():
            if name in self._index:
                self.values[self._index[name]] = float(value)
        return [n for n in self.names if n not in saved]

    def __repr__(self) -> str:
        return f"RunningStats({self.names})"
