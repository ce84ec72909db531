"""Stopping a training run cleanly: SIGTERM and SIGUSR1 (what cluster schedulers send before they
kill or requeue a job) and SIGINT ask the loop to finish its current step, write the checkpoint
and exit with :data:`EXIT_PREEMPTED`; a second SIGINT aborts at once. Under torchrun every rank
agrees on the stop, so all ranks leave at the same step.

DataLoader workers ignore the stop signals (:func:`ignore_stop_signals`), so the process that
started them ends them with SIGKILL when it exits (:func:`_end_workers_at_exit`)."""
from __future__ import annotations

import logging
import multiprocessing.util
import signal
import threading
import time
from multiprocessing import active_children
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
    signals the whole process group; a worker dying on it would break the checkpointing step).

    A worker that ignores SIGTERM also ignores the SIGTERM with which multiprocessing ends
    daemonic children at exit, before it waits for them without a time limit; so the exit would
    hang whenever a DataLoader iterator is still alive then (an error raised from a worker keeps
    its iterator in a reference cycle). :func:`_end_workers_at_exit` bounds that wait."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


EXIT_GRACE_S = 1.0  # at exit, seconds daemonic children get to end on SIGTERM before SIGKILL


def _end_workers_at_exit() -> None:
    """Exit hook: SIGTERM the daemonic children (what multiprocessing does next), wait at most
    :data:`EXIT_GRACE_S`, then SIGKILL those still alive, such as DataLoader workers that ignore
    SIGTERM (:func:`ignore_stop_signals`); multiprocessing would otherwise wait for them for ever.

    Workers are only ever killed here, when their parent is leaving and wants nothing more from
    them; during the run a stop signal still reaches the main process alone. It runs as a
    multiprocessing finalizer of priority >= 0, which ``multiprocessing.util._exit_function`` calls
    before its unbounded ``join``, at interpreter exit and at the end of a multiprocessing child
    (a rank started by ``mp.spawn``) alike.
    """
    children = [p for p in active_children() if p.daemon]
    if not children:
        return
    if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would raise on each worker ended here
    for p in children:
        p.terminate()
    deadline = time.monotonic() + EXIT_GRACE_S
    for p in children:
        p.join(max(0.0, deadline - time.monotonic()))
    survivors = [p for p in children if p.is_alive()]
    for p in survivors:
        p.kill()
    for p in survivors:
        p.join(EXIT_GRACE_S)
        if p.is_alive():  # stuck in the kernel, e.g. reading from a dead mount
            logger.warning("process %s (pid %s) did not end on SIGKILL; exit waits for it", p.name, p.pid)


def _install_exit_hook(_obj: Any = None) -> None:
    """Register :func:`_end_workers_at_exit` in this process; a forked multiprocessing child clears
    the finalizers it inherits, so it runs again there after fork."""
    multiprocessing.util.Finalize(None, _end_workers_at_exit, exitpriority=1_000)


_install_exit_hook()
multiprocessing.util.register_after_fork(_install_exit_hook, _install_exit_hook)


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
