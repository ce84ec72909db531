"""Stopping a training run cleanly: SIGTERM and SIGUSR1 (what cluster schedulers send before they
kill or requeue a job) and SIGINT ask the loop to finish its current step, write the checkpoint
and exit with :data:`EXIT_PREEMPTED`; a second SIGINT aborts at once. Under torchrun every rank
agrees on the stop, so all ranks leave at the same step."""
from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any, Dict, Optional

if TYPE_CHECKING:  # torch is imported where it is used, so the CLI can import this module cheaply
    import torch

logger = logging.getLogger(__name__)

__all__ = ["EXIT_PREEMPTED", "STOP_SIGNALS", "Preempted", "StopSignals", "ignore_stop_signals"]

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later" -- the run is resumable
STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None),
                                 getattr(signal, "SIGINT", None)) if s is not None)


class Preempted(Exception):
    """Training stopped on a signal after writing its checkpoint; the message says how to resume."""

    def __init__(self, message: str, checkpoint: str) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the main process alone reacts to stop signals (a scheduler
    signals the whole process group; a worker dying on it would break the checkpointing step)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class StopSignals:
    """Context manager that records the first stop signal instead of dying on it.

    ``requested()`` says (identically on every rank) whether some rank received one; it is an
    all-reduce of one integer under DDP, a flag read otherwise. Outside the main thread, where
    Python cannot install handlers, it records nothing.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now
        if self.received is None:
            self.received = signum
            logger.warning("received %s: stopping after the current step and writing a checkpoint "
                           "(Ctrl-C again to abort at once)", signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def requested(self, device: "torch.device") -> Optional[int]:
        """The stop signal's number if any rank received one, else None."""
        import torch
        import torch.distributed as dist

        local = self.received or 0
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([local], dtype=torch.int64, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            local = int(flag.item())
        return local or None
