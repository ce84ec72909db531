"""Continuing a run from a training checkpoint: the state, the data position (an exact mid-epoch
continuation needs the same world size, batch and train list), the per-rank RNG states and
statistics, and the repair of the checkpoint set that a kill between two writes left behind."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

from tcpnet.checkpoints import CheckpointError
from tcpnet.engine.checkpoint import repair_best, repair_ema
from tcpnet.engine.state import TrainState

logger = logging.getLogger(__name__)

__all__ = ["restore", "saved_position"]


def saved_position(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint's data position; checkpoints written before it was stored give what they
    imply (one RNG state per rank, the schedule's iterations per epoch)."""
    if isinstance(ckpt.get("data_position"), dict):
        return ckpt["data_position"]
    legacy: Dict[str, Any] = {}
    if ckpt.get("rng"):
        legacy["world_size"] = len(ckpt["rng"])
    if isinstance(ckpt.get("schedule"), dict) and "iters_per_epoch" in ckpt["schedule"]:
        legacy["iters_per_epoch"] = int(ckpt["schedule"]["iters_per_epoch"])
    return legacy


def _check_position(run: Any, state: TrainState) -> None:
    """A mid-epoch checkpoint continues exactly only where the epoch's data order is the same:
    otherwise refuse with what changed, or, with ``train.force_resume``, restart that epoch."""
    diffs = state.position.differences(saved_position(run.ckpt))
    if not diffs:
        return
    where = f"epoch {state.epoch + 1} iteration {state.iteration}"
    if state.iteration == 0:
        if run.is_main:
            logger.warning("%s: resuming at an epoch boundary with a changed data position (%s)",
                           run.resume_path, "; ".join(diffs))
        return
    if not run.cfg.train.force_resume:
        raise CheckpointError(
            f"{run.resume_path}: stopped inside an epoch ({where}), which continues exactly only with the "
            f"same processes and train list, but {'; '.join(diffs)}. Run with the checkpoint's settings, or "
            f"set train.force_resume=true to restart epoch {state.epoch + 1} from its first iteration")
    if run.is_main:
        logger.warning("%s: %s; train.force_resume: restarting epoch %d from its first iteration (not an "
                       "exact continuation)", run.resume_path, "; ".join(diffs), state.epoch + 1)
    state.iteration = 0


def restore(run: Any, state: TrainState) -> None:
    """Load ``run.ckpt`` into ``state`` and this rank's RNG states, after the checks."""
    ckpt, info = run.ckpt, run.dist
    state.load_state_dict(ckpt, source=run.resume_path)
    _check_position(run, state)
    state.load_local_state(ckpt, info.rank, info.world_size)
    if run.is_main and Path(run.resume_path).resolve() == (run.out_dir / "last.pt").resolve():
        repair_best(run.out_dir, ckpt)
        if state.ema is not None and state.iteration == 0:
            repair_ema(run.out_dir, state.ema.module, run.class_names, state.epoch)
    if run.is_main:
        where = (f"epoch {state.epoch + 1} at iteration {state.iteration}/{state.position.iters_per_epoch}"
                 if state.iteration else f"after epoch {state.epoch}/{run.cfg.train.epochs}")
        logger.info("resuming %s: %s (best %s so far)", run.resume_path, where,
                    "-" if state.best_epoch < 0 else f"{state.best_metric:.3f} at epoch {state.best_epoch + 1}")
