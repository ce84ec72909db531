"""The training state: everything a checkpoint holds to continue a run exactly.

:class:`TrainState` is the one list of what a training checkpoint contains. Components with a
``state_dict`` (model, optimizer, scaler, EMA) are saved under their field name, counters
(epoch, iteration, best metric) as numbers, and the per-rank parts (RNG states, the loader's
generator, the epoch's running statistics) as one entry per rank, gathered by the caller.
Adding a stateful component is one field here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from tcpnet.checkpoints import CheckpointError
from tcpnet.engine.checkpoint import capture_rng_state, restore_rng_state
from tcpnet.engine.optim import align_saved_groups
from tcpnet.engine.stats import RunningStats

__all__ = ["TrainState", "DataPosition"]

# checkpoint key of a component whose name differs from its field (model files say "state_dict")
_KEYS = {"model": "state_dict", "iteration": "iter"}
_COMPONENTS = ("model", "optimizer", "scaler", "ema")
_COUNTERS = ("epoch", "iteration", "best_metric", "best_epoch")


@dataclass(frozen=True)
class DataPosition:
    """What the position "epoch E, iteration I" means in the data: an exact mid-epoch resume needs
    the same world size, batch per rank and train list length (the epoch's order depends on them)."""

    world_size: int = 1
    batch_per_rank: int = 1
    num_videos: int = 0
    iters_per_epoch: int = 0

    def differences(self, saved: Dict[str, Any]) -> List[str]:
        """``name: checkpoint X, now Y`` for each field that changed (fields the checkpoint lacks are skipped)."""
        now = dataclasses.asdict(self)
        return [f"{k}: checkpoint {saved[k]}, now {v}" for k, v in now.items() if k in saved and saved[k] != v]


@dataclass
class TrainState:
    """Model, optimizer, scaler, EMA, position (epoch being run, next iteration in it), best
    metric, RNG states and the epoch's running statistics."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    stats: RunningStats
    ema: Optional[nn.Module] = None
    epoch: int = 0            # the epoch to run (0-based); epochs before it are done
    iteration: int = 0        # next iteration inside ``epoch`` (0: at an epoch boundary)
    best_metric: float = -math.inf
    best_epoch: int = -1
    loader_generator: torch.Generator = field(default_factory=torch.Generator)
    position: DataPosition = field(default_factory=DataPosition)

    # ------------------------------------------------------------------ per rank
    def local_state(self) -> Dict[str, Any]:
        """This rank's part: RNG states (with the loader's generator) and, inside an epoch, its
        running statistics by name."""
        rng = capture_rng_state()
        rng["loader"] = self.loader_generator.get_state()
        return {"rng": rng, "stats": self.stats.state_dict() if self.iteration else None}

    def load_local_state(self, ckpt: Dict[str, Any], rank: int, world_size: int) -> None:
        """Restore this rank's RNG states and statistics when the checkpoint has one entry per rank."""
        rng = ckpt.get("rng") or []
        if len(rng) == world_size:
            restore_rng_state(rng[rank])
            if "loader" in rng[rank]:
                self.loader_generator.set_state(rng[rank]["loader"])
        stats = ckpt.get("epoch_stats") or ckpt.get("epoch_sums") or []  # epoch_sums: positional, before names
        self.stats.load_state_dict(stats[rank] if self.iteration and len(stats) == world_size else None)

    # ------------------------------------------------------------------ whole state
    def state_dict(self, local_states: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The checkpoint entries of this state; ``local_states``: every rank's :meth:`local_state`."""
        out: Dict[str, Any] = {}
        for name in _COMPONENTS:
            value = getattr(self, name)
            if value is not None:
                out[_KEYS.get(name, name)] = value.state_dict()
        for name in _COUNTERS:
            out[_KEYS.get(name, name)] = getattr(self, name)
        out["rng"] = [s["rng"] for s in local_states]
        out["epoch_stats"] = [s["stats"] for s in local_states] if self.iteration else None
        out["data_position"] = dataclasses.asdict(self.position)
        out["schedule"] = {"iters_per_epoch": self.position.iters_per_epoch}
        return out

    def load_state_dict(self, ckpt: Dict[str, Any], *, source: str = "checkpoint") -> None:
        """Restore components and counters (not the per-rank part: :meth:`load_local_state`)."""
        for name in _COMPONENTS:
            value, key = getattr(self, name), _KEYS.get(name, name)
            if value is None:
                continue
            if key not in ckpt:
                raise CheckpointError(f"{source}: has no {key!r} entry, which this run needs"
                                      + (" (train.ema_decay is set but the run that wrote it kept no EMA)"
                                         if name == "ema" else ""))
            saved = ckpt[key]
            if name == "optimizer":
                try:
                    saved = align_saved_groups(saved, value, source)
                except ValueError as e:
                    raise CheckpointError(str(e)) from None
            value.load_state_dict(saved)
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt.get("iter", 0))
        self.best_metric = float(ckpt.get("best_metric", -math.inf))
        self.best_epoch = int(ckpt.get("best_epoch", -1))
