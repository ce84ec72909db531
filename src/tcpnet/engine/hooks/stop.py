"""Stopping inside an epoch: after a step, stop on a signal (SIGTERM/SIGUSR1/SIGINT, see
:mod:`tcpnet.engine.preemption`) or pause to write a mid-epoch checkpoint when
``train.checkpoint_every`` is due. Every rank takes the same decision (one small all-reduce)."""
from __future__ import annotations

import time
from typing import Any, List

import torch
import torch.distributed as dist

from tcpnet.config import parse_interval
from tcpnet.engine.hooks.base import Hook, Step, register_hook


def agree(flags: List[int], device: torch.device) -> List[int]:
    """Element-wise max of ``flags`` over all ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flags
    t = torch.tensor(flags, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


@register_hook("stop")
class StopOrCheckpoint(Hook):
    order = 100  # last: the step is complete

    def __init__(self, run: Any) -> None:
        self.run = run
        every = run.cfg.train.checkpoint_every
        self.interval = parse_interval(every) if every else None

    @classmethod
    def from_run(cls, run: Any) -> "StopOrCheckpoint":
        return cls(run)

    def after_iteration(self, step: Step, stats: Any) -> None:
        if step.last:
            return
        due = 0
        if self.interval is not None:
            kind, every = self.interval
            next_iter = step.iteration + 1
            due = int(next_iter % every == 0 if kind == "iters"
                      else time.time() - self.run.last_save >= 60 * every)
        signals = self.run.signals
        signal_flag, due = agree([int(signals is not None and signals.received is not None), due],
                                 self.run.device)
        step.stop = "signal" if signal_flag else ("checkpoint" if due else None)
