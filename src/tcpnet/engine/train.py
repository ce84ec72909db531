"""Training: ``train(cfg)`` is :func:`~tcpnet.engine.setup.setup` (every check, then the run's
parts and its :class:`~tcpnet.engine.state.TrainState`) followed by
:func:`~tcpnet.engine.fit.fit` (epochs of :func:`~tcpnet.engine.loop.train_one_epoch` with its
hooks, validation, checkpoints). Every knob is in the Config (tcpnet.config)."""
from __future__ import annotations

from typing import Any, Dict

from tcpnet.config import Config
from tcpnet.engine.ema import build_ema
from tcpnet.engine.fit import finish, fit, save_checkpoint, validate
from tcpnet.engine.hooks.nonfinite import NonFiniteError
from tcpnet.engine.loop import LoopContext, train_one_epoch
from tcpnet.engine.setup import ResumableSampler, epoch_seed, setup
from tcpnet.engine.state import TrainState

__all__ = ["train", "train_one_epoch", "validate", "save_checkpoint", "build_ema", "epoch_seed",
           "NonFiniteError", "ResumableSampler", "TrainState", "LoopContext"]


def train(cfg: Config) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` for ``cfg.train.epochs``; return a summary dict with the
    best validation metric, the final epoch's record, checkpoint paths, the trained model and the
    last validation EvalResult (``last_eval``; None if no validation ran in this call).
    Raises :class:`~tcpnet.engine.preemption.Preempted` after a stop signal (checkpoint written)."""
    run = setup(cfg)
    try:
        result = fit(run)
        finish(run)
        return result
    finally:
        if run.lock is not None:
            run.lock.release()
