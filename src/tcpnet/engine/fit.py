"""Running a set-up training run: epochs (each in parts between mid-epoch checkpoints), validation,
the epoch record, checkpoints, and stopping on a signal.

Reproducibility: each epoch's data order, augmentation, mixing and dropout are pure functions of
(seed, epoch, rank) and of the RNG states saved in the checkpoint, so a run resumed from any
checkpoint -- at an epoch boundary or, with ``train.checkpoint_every``, inside an epoch at the
batch where it stopped -- ends with the same weights as an uninterrupted run, even after a
SIGKILL. SIGTERM/SIGUSR1/SIGINT stop after the current step with a checkpoint
(:mod:`tcpnet.engine.preemption`, exit code 75 from the CLI).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from tcpnet.checkpoints.io import model_file_fields
from tcpnet.config import config_to_dict
from tcpnet.engine.checkpoint import save_training_checkpoint
from tcpnet.engine.distributed import all_gather_objects, cleanup_distributed
from tcpnet.engine.evaluate import EvalResult, evaluate
from tcpnet.engine.hooks.nonfinite import NonFiniteError
from tcpnet.engine.logs import RunLogger, plot_curves
from tcpnet.engine.loop import LoopContext, train_one_epoch
from tcpnet.engine.optim import base_lr_at, group_summary, left_out_parameters
from tcpnet.engine.preemption import EXIT_PREEMPTED, Preempted, StopSignals
from tcpnet.engine.setup import Run, seed_epoch
from tcpnet.models import unwrap_model

logger = logging.getLogger(__name__)

__all__ = ["fit", "validate", "save_checkpoint", "nonfinite_tensors"]


def validate(model: nn.Module, loader: Any, *, device: torch.device, fusion: str,
             amp: str, num_classes: int, progress: bool = False) -> EvalResult:
    """Evaluate ``model`` on the validation shard of this rank with the test fusion
    (``test.fusion``; ``auto`` = sigmoid for multi-label data); under DDP rank 0's BN statistics
    are used on every rank."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
    return evaluate(model, loader, device=device, fusion=fusion, amp=None if amp == "none" else amp,
                    num_classes=num_classes, progress=progress)


def save_checkpoint(ckpt: Dict[str, Any], out_dir: Path, *, is_best: bool,
                    ema_fields: Optional[Dict[str, Any]] = None) -> Dict[str, Path]:
    """Write ``last.pt``, then ``best.pt`` when ``is_best``, atomically, plus the EMA weights as
    the model file ``ema.pt``; return the paths written. last.pt goes first: a kill between the
    writes leaves a last.pt that the next start repairs best.pt and ema.pt from."""
    written = {"last": save_training_checkpoint(ckpt, out_dir / "last.pt")}
    if is_best:
        written["best"] = save_training_checkpoint(ckpt, out_dir / "best.pt")
    if ema_fields is not None:
        written["ema"] = save_training_checkpoint(ema_fields, out_dir / "ema.pt")
    return written


def nonfinite_tensors(model: nn.Module) -> List[str]:
    """Names of the parameters and floating-point buffers (BatchNorm statistics) holding NaN/Inf."""
    named = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if b.is_floating_point())]
    if not named:
        return []
    flags = torch.stack([t.detach().isfinite().all() for _, t in named]).tolist()  # one sync
    return [n for (n, _), ok in zip(named, flags) if not ok]


def checkpoint_dict(run: Run) -> Dict[str, Any]:
    """The training checkpoint of every rank's position (collective: every rank calls it; {} off rank 0)."""
    state = run.state
    local_states = all_gather_objects(state.local_state())
    if not run.is_main:
        return {}
    bad = nonfinite_tensors(state.model)
    if bad:
        where = f"epoch {state.epoch + 1} iteration {state.iteration}" if state.iteration else f"epoch {state.epoch}"
        raise NonFiniteError(f"{where}: the weights are not finite: {len(bad)} parameters or "
                             f"BatchNorm statistics are not finite ({', '.join(bad[:5])}"
                             f"{', ...' if len(bad) > 5 else ''}); {run.out_dir / 'last.pt'} (the last good "
                             "checkpoint) was not overwritten")
    ckpt = {**model_file_fields(state.model, run.class_names), "multi_label": run.multi_label,
            **state.state_dict(local_states), "metric_name": run.metric_name, "config": config_to_dict(run.cfg)}
    ckpt["schedule"]["name"] = run.cfg.train.lr_schedule
    return ckpt


def _stop_message(run: Run) -> str:
    s = run.state
    where = (f"epoch {s.epoch + 1} iteration {s.iteration}/{run.iters_per_epoch}" if s.iteration
             else f"the end of epoch {s.epoch}")
    last = run.out_dir / "last.pt"
    return (f"stopped on a signal at {where}; checkpoint: {last}. Run the same command again to resume "
            f"(train.auto_resume picks up {last})")


PREEMPTED_FILE = "preempted.json"


def preempted(run: Run) -> Preempted:
    """The exception that ends a run stopped by a signal, after writing ``preempted.json`` (where
    and why, and exit code 75): under torchrun the launcher's own exit code is 1 whatever its
    workers returned, so a job script reads this file to know the run is resumable."""
    if run.is_main:
        s = run.state
        info = {"exit_code": EXIT_PREEMPTED, "epoch": s.epoch, "iteration": s.iteration,
                "checkpoint": str(run.out_dir / "last.pt"), "time": time.time()}
        (run.out_dir / PREEMPTED_FILE).write_text(json.dumps(info) + "\n")
    return Preempted(_stop_message(run), str(run.out_dir / "last.pt"))


def run_epoch(run: Run, ctx: LoopContext) -> float:
    """Train the rest of epoch ``run.state.epoch``, writing a checkpoint at each pause a hook asks
    for; raises Preempted after a stop signal (checkpoint written). Returns the epoch's seconds."""
    state, cfg = run.state, run.cfg
    if state.iteration == 0:  # a mid-epoch resume restored the RNG states and statistics
        seed_epoch(cfg.seed, state.epoch, run.dist.rank, state.loader_generator)
        state.stats.reset()
    run.train_sampler.set_epoch(state.epoch)
    if hasattr(run.datasets["train"], "set_epoch"):
        run.datasets["train"].set_epoch(state.epoch)
    t0 = time.time()
    while True:  # parts of the epoch between mid-epoch checkpoints
        run.train_sampler.start = state.iteration * state.position.batch_per_rank
        stop = train_one_epoch(state, run.train_loader(), ctx)
        if stop is None:
            break
        ckpt = checkpoint_dict(run)
        if run.is_main:
            save_training_checkpoint(ckpt, run.out_dir / "last.pt")
            run.last_save = time.time()
        if stop == "signal":
            raise preempted(run)
    run.train_sampler.start = 0
    return time.time() - t0


def _val_model(model: nn.Module, cached: bool) -> nn.Module:
    """What validation runs: ``model``, or with a feature cache (the val loader yields the frozen
    backbone's cached maps) its :meth:`~tcpnet.models.Recognizer.head_classifier`, in the model's
    mode, so evaluation leaves the model in the mode it found it in, as without a cache."""
    if not cached:
        return model
    owner = unwrap_model(model)
    head = owner.head_classifier()
    head.training = owner.training  # the flag alone: train() would apply the model's mode rules again
    return head


def _validate_epoch(run: Run, epoch: int) -> Tuple[Dict[str, Any], Optional[EvalResult]]:
    cfg, tc = run.cfg, run.cfg.train
    if run.val_loader is None or not ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs):
        return {}, None
    progress = run.is_main and sys.stderr.isatty()
    cached = bool(cfg.data.cache_features)
    res = validate(_val_model(run.state.model, cached), run.val_loader, device=run.device, fusion=cfg.test.fusion,
                   amp=tc.amp, num_classes=run.num_classes, progress=progress)
    metrics = {k: v for k, v in res.metrics.items() if k != "confusion_matrix"}
    if run.state.ema is not None:
        ema_res = validate(_val_model(run.state.ema.module, cached), run.val_loader, device=run.device,
                           fusion=cfg.test.fusion, amp=tc.amp, num_classes=run.num_classes, progress=progress)
        metrics.update({f"ema_{k}": v for k, v in ema_res.metrics.items() if k != "confusion_matrix"})
    return metrics, res


def _epoch_record(run: Run, ctx: LoopContext, epoch: int, epoch_time: float) -> Dict[str, Any]:
    """Statistics summed over ranks, as the epoch record (hooks add their fields)."""
    totals = {k: sum(r[k] for r in all_gather_objects(run.state.stats.read())) for k in run.state.stats.names}
    train_set, tc = run.datasets["train"], run.cfg.train
    bad = len(train_set.bad_items(epoch)) if hasattr(train_set, "bad_items") else 0
    n, multi = max(totals["clips"], 1.0), run.multi_label
    record = dict(epoch=epoch, step=(epoch + 1) * run.iters_per_epoch,
                  lr=base_lr_at(epoch, lr=tc.lr, schedule=tc.lr_schedule, lr_steps=tc.lr_steps, epochs=tc.epochs),
                  train_loss=totals["loss_sum"] / n, train_top1=None if multi else 100 * totals["top1_hits"] / n,
                  train_top5=None if multi else 100 * totals["top5_hits"] / n, train_clips=int(totals["clips"]),
                  epoch_time=epoch_time, clips_per_s=totals["clips"] / max(epoch_time, 1e-9),
                  bad_items=sum(all_gather_objects(bad)), grad_clipped=0, skipped_steps=0)
    for h in ctx.hooks:
        h.on_epoch_end(totals, record)
    return record


def end_epoch(run: Run, ctx: LoopContext, epoch_time: float) -> Tuple[Dict[str, Any], Optional[EvalResult]]:
    """Epoch record, validation, best metric, checkpoint set; the state moves to the next epoch."""
    state = run.state
    epoch = state.epoch
    record = _epoch_record(run, ctx, epoch, epoch_time)
    t0 = time.time()
    val_metrics, last_eval = _validate_epoch(run, epoch)
    record["val_time"] = time.time() - t0 if val_metrics else None
    current = val_metrics.get(run.metric_name)
    is_best = current is not None and current > state.best_metric
    if is_best:
        state.best_metric, state.best_epoch = current, epoch
    record.update({f"val_{k}": v for k, v in val_metrics.items()},
                  best_metric=None if state.best_epoch < 0 else state.best_metric, best_epoch=state.best_epoch)
    state.epoch, state.iteration = epoch + 1, 0
    ckpt = checkpoint_dict(run)
    if run.is_main:
        _log_epoch(run, record, val_metrics)
        ema_fields = ({**model_file_fields(state.ema.module, run.class_names), "epoch": state.epoch}
                      if state.ema is not None else None)
        final = run.val_loader is None and epoch + 1 == run.cfg.train.epochs
        save_checkpoint(ckpt, run.out_dir, is_best=is_best or final, ema_fields=ema_fields)
        run.last_save = time.time()
    return record, last_eval


_BASE_ITER_FIELDS = {"epoch", "iter", "step", "lr", "loss", "top1", "top5", "clips_per_s"}


def _log_iteration(run: Run, log: RunLogger, rec: Dict[str, Any], bar: bool) -> None:
    rec["clips_per_s"] *= run.dist.world_size
    log.log("train", **rec)
    log.scalars(rec["step"], {"loss/train_iter": rec["loss"], "perf/clips_per_s": rec["clips_per_s"],
                              **{f"train/{k}": v for k, v in rec.items()
                                 if k not in _BASE_ITER_FIELDS and isinstance(v, (int, float))}})
    if not bar:
        extra = "".join(f" {k} {v:.4g}" for k, v in rec.items()
                        if k not in _BASE_ITER_FIELDS and isinstance(v, float))
        logger.info("epoch %d iter %d/%d loss %.4f top1 %s lr %.3g %.1f clips/s%s", rec["epoch"] + 1, rec["iter"],
                    run.iters_per_epoch, rec["loss"], "-" if rec["top1"] is None else f"{rec['top1']:.2f}",
                    rec["lr"], rec["clips_per_s"], extra)


def _log_epoch(run: Run, record: Dict[str, Any], val: Dict[str, Any]) -> None:
    log = run.run_log
    log.log("epoch", **record)
    log.scalars(record["step"], {
        "loss/train": record["train_loss"], "acc/train_top1": record["train_top1"],
        "acc/train_top5": record["train_top5"], "loss/val": val.get("loss"), "acc/val_top1": val.get("top1"),
        "acc/val_top5": val.get("top5"), "acc/val_mAP": val.get("mAP"), "acc/val_ema_top1": val.get("ema_top1"),
        "acc/val_best": record["best_metric"], "perf/clips_per_s_epoch": record["clips_per_s"],
        "data/bad_items": record["bad_items"], "train/grad_norm": record.get("grad_norm"),
        **{f"lr/{g['name']}": g["lr"] for g in run.state.optimizer.param_groups}})
    logger.info("epoch %d/%d: train loss %.4f top1 %s | val %s | %.0fs, %.1f clips/s, %d bad videos%s",
                record["epoch"] + 1, run.cfg.train.epochs, record["train_loss"],
                "-" if record["train_top1"] is None else f"{record['train_top1']:.2f}",
                " ".join(f"{k} {v:.3f}" for k, v in val.items() if isinstance(v, float)) or "-",
                record["epoch_time"], record["clips_per_s"], record["bad_items"],
                f", {record['skipped_steps']} non-finite steps skipped" if record["skipped_steps"] else "")


def _log_start(run: Run) -> None:
    state, opt = run.state, run.state.optimizer
    run.run_log.log("start", world_size=run.dist.world_size, device=str(run.device), start_epoch=state.epoch,
                    start_iter=state.iteration, iters_per_epoch=run.iters_per_epoch, num_classes=run.num_classes,
                    resumed_from=run.resume_path, train_videos=len(run.datasets["train"]),
                    val_videos=len(run.datasets["val"]) if run.val_loader else 0,
                    hooks=[h.name for h in run.hooks],
                    groups=[{k: v for k, v in g.items() if k != "lr"} for g in group_summary(opt)])
    for g in group_summary(opt):
        logger.info("group %-20s %4d tensors  lr_mult %g  decay_mult %g",
                    g["name"], g["num_tensors"], g["lr_mult"], g["decay_mult"])
    left_out = left_out_parameters(state.model, run.cfg.model.partial_bn)
    if left_out:
        logger.info("partial BN: %d trainable tensors kept out of the optimizer as published: %s",
                    len(left_out), ", ".join(left_out))


def summary(run: Run, final: Dict[str, Any], last_eval: Optional[EvalResult], **extra: Any) -> Dict[str, Any]:
    """What ``train`` returns: paths, classes, best metric, the final epoch record, the model."""
    out, state = run.out_dir, run.state
    return {"output_dir": str(out), "metric_name": run.metric_name, "last_checkpoint": str(out / "last.pt"),
            "best_checkpoint": str(out / "best.pt"), "num_classes": run.num_classes,
            "class_names": run.class_names, "ema_checkpoint": str(out / "ema.pt") if state.ema is not None else None,
            "resumed_from": run.resume_path, "best_metric": None if state.best_epoch < 0 else state.best_metric,
            "best_epoch": state.best_epoch, "final": final, "model": unwrap_model(state.model),
            "last_eval": last_eval, **extra}


def fit(run: Run) -> Dict[str, Any]:
    """Epochs ``run.state.epoch .. train.epochs - 1``: train, validate, checkpoint; see :func:`summary`."""
    tc, state = run.cfg.train, run.state
    if state.epoch >= tc.epochs:
        if run.is_main:
            logger.warning("%s has already finished %d of train.epochs=%d epochs: nothing to train (raise "
                           "train.epochs to continue, or use another output_dir)", run.resume_path, state.epoch,
                           tc.epochs)
        return summary(run, {}, None, nothing_to_do=True)
    run.run_log = RunLogger(run.out_dir, enabled=run.is_main,
                            resume_step=state.epoch * run.iters_per_epoch + state.iteration)
    if run.is_main:
        _log_start(run)
    for h in run.hooks:
        h.on_fit_start(run)
    bar = run.is_main and sys.stderr.isatty()
    ctx = LoopContext(model=run.train_model, criterion=run.criterion, device=run.device, train=tc,
                      iters_per_epoch=run.iters_per_epoch, multi_label=run.multi_label, hooks=run.hooks,
                      log=(lambda rec: _log_iteration(run, run.run_log, rec, bar)) if run.is_main else None,
                      progress=bar)
    record, last_eval = {}, None
    try:
        with StopSignals() as run.signals:
            while state.epoch < tc.epochs:
                record, ev = end_epoch(run, ctx, run_epoch(run, ctx))
                last_eval = ev or last_eval
                if state.epoch < tc.epochs and run.signals.requested(run.device):
                    raise preempted(run)
        run.run_log.log("end", step=tc.epochs * run.iters_per_epoch, best_epoch=state.best_epoch,
                        best_metric=None if state.best_epoch < 0 else state.best_metric)
    finally:
        run.run_log.close()  # flush what was logged; the checkpoints on disk are consistent
    if run.is_main:
        if run.run_log.jsonl_path.is_file():
            plot_curves(run.run_log.jsonl_path, run.out_dir / "curves.png")
    return summary(run, record, last_eval)


def finish(run: Run) -> None:
    """After a complete run: every rank done, then leave the process group this run joined."""
    if run.dist.world_size > 1:
        dist.barrier()
        cleanup_distributed()
