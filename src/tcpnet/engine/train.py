"""Training: ``train(cfg)`` reads top to bottom like nanoGPT's train.py -- setup, data, model,
optimizer, resume, then the epoch loop: :func:`train_one_epoch`, :func:`validate`,
:func:`save_checkpoint`. Every knob is in the Config (tcpnet.config); EMA and mixup/cutmix are
arguments of the epoch function, not hooks.

Reproducibility: each epoch's data order, augmentation, mixing and dropout are pure functions of
(seed, epoch, rank) and of the RNG states saved in the checkpoint, so a run resumed from any
checkpoint -- at an epoch boundary or, with ``train.checkpoint_every``, inside an epoch at the
batch where it stopped -- ends with the same weights as an uninterrupted run, even after a
SIGKILL. SIGTERM/SIGUSR1/SIGINT stop after the current step with a checkpoint (see
:mod:`tcpnet.engine.preemption`); a non-finite loss or gradient norm stops the run without
writing a checkpoint (``train.nonfinite=stop``) or skips the step (``skip``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler

from tcpnet.checkpoints import CheckpointError, load_pretrained
from tcpnet.checkpoints.io import model_file_fields
from tcpnet.config import Config, ConfigError, TrainConfig, config_to_dict, model_name, parse_interval, save_config
from tcpnet.data.build import (IndexedSubset, build_datasets, check_data_config, infer_num_classes,
                               read_lists, resolve_input_config)
from tcpnet.engine.checkpoint import (capture_rng_state, check_resume_config, load_training_checkpoint,
                                      prepare_output_dir, repair_best, restore_rng_state,
                                      save_training_checkpoint)
from tcpnet.engine.distributed import (all_gather_objects, cleanup_distributed, init_distributed,
                                       shard_indices)
from tcpnet.engine.evaluate import EvalResult, autocast_context, evaluate
from tcpnet.engine.logs import RunLogger, plot_curves
from tcpnet.engine.metrics import class_ranks
from tcpnet.engine.mixup import MixupCutmix
from tcpnet.engine.optim import base_lr_at, build_optimizer, group_summary, left_out_parameters, set_lr
from tcpnet.engine.preemption import Preempted, StopSignals, ignore_stop_signals
from tcpnet.models import build_model, unwrap_model
from tcpnet.utils.malloc import retain_freed_memory

logger = logging.getLogger(__name__)

__all__ = ["train", "train_one_epoch", "validate", "save_checkpoint", "build_ema", "epoch_seed",
           "NonFiniteError", "ResumableSampler"]

# running sums kept on the device: loss*n, top-1 hits, top-5 hits, clips, clipped steps, non-finite steps
_SUMS = ("loss_sum", "top1_hits", "top5_hits", "clips", "clipped_steps", "nonfinite_steps")


class NonFiniteError(FloatingPointError):
    """The loss or gradient norm became NaN/Inf (``train.nonfinite=stop``)."""


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch at a given batch (mid-epoch resume); the order
    itself is the usual function of (seed, epoch), so skipping reproduces the rest exactly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start = 0  # samples of this rank's epoch order to skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(super().__len__() - self.start, 0)


def epoch_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, epoch, rank, stream)."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(2, np.uint64)[0] >> 1)


def _seed_epoch(seed: int, epoch: int, rank: int, loader_gen: torch.Generator) -> None:
    """Make the epoch's randomness a function of (seed, epoch, rank) only."""
    torch.manual_seed(epoch_seed(seed, epoch, rank))
    np.random.seed(epoch_seed(seed, epoch, rank) % 2**32)
    random.seed(epoch_seed(seed, epoch, rank))
    loader_gen.manual_seed(epoch_seed(seed, epoch, rank, stream=1))


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of the weights and buffers (BN statistics) of ``model``."""
    return AveragedModel(unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _bad_items(dataset, epoch: int) -> int:
    """Undecodable videos replaced in ``epoch`` (the dataset counts them across workers)."""
    return len(dataset.bad_items(epoch)) if hasattr(dataset, "bad_items") else 0


def _agree(flags: List[int], device: torch.device) -> List[int]:
    """Element-wise max of ``flags`` over all ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flags
    t = torch.tensor(flags, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                    criterion: nn.Module, scaler: torch.amp.GradScaler, device: torch.device,
                    epoch: int, iters_per_epoch: int, tc: TrainConfig, multi_label: bool = False,
                    ema: Optional[AveragedModel] = None, batch_transform: Optional[MixupCutmix] = None,
                    log: Optional[Callable[[Dict[str, Any]], None]] = None, progress: bool = False,
                    start_iter: int = 0, sums: Optional[List[float]] = None,
                    pause: Optional[Callable[[int], Optional[str]]] = None,
                    describe: Optional[Callable[[torch.Tensor], List[str]]] = None) -> Dict[str, Any]:
    """Iterations ``start_iter .. iters_per_epoch - 1`` of one epoch; returns this rank's sums
    (``loss_sum``, hits, ``clips``, ...), ``next_iter`` and ``stop``: None when the epoch is
    done, else what ``pause(next_iter)`` asked for after a step ("checkpoint" or "signal").

    Running sums stay on the device; the host reads them every ``tc.log_every`` iterations
    (each read is a device sync). A non-finite loss or gradient norm is flagged on the device
    and raised as :class:`NonFiniteError` at the next read, naming the iteration and the
    batch's videos (``describe(indices)``); with ``tc.nonfinite == "skip"`` the step is skipped
    instead, which needs one sync per step. ``batch_transform`` (mixup/cutmix) turns labels into
    soft targets for the loss; accuracy counts the hard labels. ``ema`` is updated after every
    optimizer step. Batches are ``(clips, labels[, dataset indices])``.
    """
    bare = unwrap_model(model)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    distributed = isinstance(model, nn.parallel.DistributedDataParallel)
    skip_nonfinite = tc.nonfinite == "skip"
    state = torch.tensor(sums if sums is not None else [0.0] * len(_SUMS), dtype=torch.float64, device=device)
    first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 1-based iteration of the first NaN
    recent: Dict[int, Any] = {}  # iteration -> the batch's dataset indices, since the last read
    t_log, last_logged = time.time(), start_iter
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=iters_per_epoch, initial=start_iter, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   dynamic_ncols=True)

    def read() -> List[float]:
        s = state.tolist()  # the sync point
        if s[5] and not skip_nonfinite:
            it_bad = int(first_bad.item())
            videos = describe(recent[it_bad]) if describe is not None and it_bad in recent else []
            raise NonFiniteError(
                f"epoch {epoch + 1} iteration {it_bad}: the loss or gradient norm is not finite"
                + (f" (batch: {', '.join(videos)})" if videos else "")
                + "; stopped without writing a checkpoint (train.nonfinite=skip skips such steps)")
        recent.clear()
        return s

    model.train()
    stop: Optional[str] = None
    it = start_iter
    for it, batch in enumerate(loader, start=start_iter):
        if it >= iters_per_epoch:
            break
        clips = batch[0].to(device, non_blocking=True)
        targets = batch[1].to(device, non_blocking=True)
        if len(batch) > 2:
            recent[it + 1] = batch[2]
        loss_targets = targets.float() if multi_label else targets
        if batch_transform is not None:
            clips, loss_targets = batch_transform(clips, targets)
        base_lr = base_lr_at(epoch, lr=tc.lr, schedule=tc.lr_schedule, lr_steps=tc.lr_steps, epochs=tc.epochs,
                             warmup_epochs=tc.warmup_epochs, iteration=it, iters_per_epoch=iters_per_epoch)
        set_lr(optimizer, base_lr)
        do_step = (it + 1) % tc.accumulate_steps == 0 or it + 1 == iters_per_epoch
        sync = model.no_sync() if (distributed and not do_step) else contextlib.nullcontext()
        with sync:
            with autocast_context(device, tc.amp):
                logits = model(clips)
                loss = criterion(logits.float(), loss_targets)
            scaler.scale(loss / tc.accumulate_steps).backward()
        finite = torch.isfinite(loss.detach())
        if do_step:
            scaler.unscale_(optimizer)
            if scaler.is_enabled():  # grads outside the optimizer are still scaled
                for p in bare.parameters():
                    if p.grad is not None and id(p) not in in_optimizer:
                        p.grad.div_(scaler.get_scale())
            grads = [p for p in bare.parameters() if p.grad is not None]
            if tc.clip_grad_norm:  # published: global norm over every parameter with a gradient
                norm = nn.utils.clip_grad_norm_(grads, max_norm=tc.clip_grad_norm)
                state[4] += (norm > tc.clip_grad_norm).to(state.dtype)
            else:
                norm = nn.utils.get_total_norm([p.grad for p in grads]) if grads else torch.zeros((), device=device)
            finite = finite & torch.isfinite(norm)
        if skip_nonfinite and not bool(finite):  # one sync per step, only in skip mode
            state[5] += 1
            optimizer.zero_grad(set_to_none=True)
            if do_step and scaler.is_enabled():
                scaler.update()
            logger.warning("epoch %d iteration %d: non-finite loss or gradient norm; step skipped",
                           epoch + 1, it + 1)
        else:
            if do_step:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update_parameters(bare)
            with torch.no_grad():
                bad = ~finite
                state[5] += bad.to(state.dtype)
                first_bad = torch.where((first_bad == 0) & bad, torch.full_like(first_bad, it + 1), first_bad)
                n = clips.shape[0]
                state[0] += loss.detach().double() * n
                state[3] += n
                if not multi_label:
                    ranks = class_ranks(logits.detach(), targets)
                    state[1] += (ranks < 1).sum()
                    state[2] += (ranks < 5).sum()
        last = it + 1 == iters_per_epoch
        if (it + 1) % tc.log_every == 0 or last:
            s = read()
            n_seen = max(s[3], 1.0)
            rec = dict(epoch=epoch, iter=it + 1, step=epoch * iters_per_epoch + it + 1, lr=base_lr,
                       loss=s[0] / n_seen, top1=None if multi_label else 100 * s[1] / n_seen,
                       top5=None if multi_label else 100 * s[2] / n_seen,
                       clips_per_s=clips.shape[0] * (it + 1 - last_logged) / max(time.time() - t_log, 1e-9))
            t_log, last_logged = time.time(), it + 1
            if log is not None:
                log(rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=None if multi_label else f"{rec['top1']:.1f}")
        if bar is not None:
            bar.update(1)
        if pause is not None and not last:
            stop = pause(it + 1)
            if stop is not None:
                read()  # never checkpoint weights that a non-finite step has touched
                break
    if bar is not None:
        bar.close()
    s = state.tolist()
    return {**dict(zip(_SUMS, s)), "sums": s, "next_iter": it + 1 if stop else iters_per_epoch, "stop": stop}


def validate(model: nn.Module, loader: DataLoader, *, device: torch.device, fusion: str,
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
    two leaves a last.pt that names itself best, and the next start restores best.pt from it."""
    written = {"last": save_training_checkpoint(ckpt, out_dir / "last.pt")}
    if is_best:
        written["best"] = save_training_checkpoint(ckpt, out_dir / "best.pt")
    if ema_fields is not None:
        written["ema"] = save_training_checkpoint(ema_fields, out_dir / "ema.pt")
    return written


def _all_finite(model: nn.Module) -> bool:
    return bool(torch.stack([p.detach().float().isfinite().all() for p in model.parameters()]).all())


def train(cfg: Config) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` for ``cfg.train.epochs``; return a summary dict with the
    best validation metric, the final epoch's record, checkpoint paths, the trained model and the
    last validation EvalResult (``last_eval``; None if no validation ran in this call).
    Raises :class:`~tcpnet.engine.preemption.Preempted` after a stop signal (checkpoint written)."""
    # ------------------------------------------------------------------ checks before any work
    check_data_config(cfg.data)
    if not cfg.data.train_list:
        raise ConfigError("data.train_list is not set: a training run needs at least data.train_list "
                          "(and usually data.val_list and data.root)")
    interval = parse_interval(cfg.train.checkpoint_every) if cfg.train.checkpoint_every else None

    # ------------------------------------------------------------------ setup: ranks, device, dirs
    if cfg.retain_freed_memory:  # activations re-used in place instead of page-faulted in every step
        retain_freed_memory()
    info = init_distributed(cfg.device)
    owns_process_group = info.world_size > 1
    device, rank, world, is_main = info.device, info.rank, info.world_size, info.is_main
    out_dir = Path(cfg.output_dir)
    if is_main:
        prepare_output_dir(out_dir)
    tc = cfg.train
    if tc.batch_size % world:
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the world size {world}")
    batch_per_rank = tc.batch_size // world
    if tc.amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use train.amp=bf16 on CPU")
    torch.manual_seed(cfg.seed)  # model initialisation is the same on every rank

    # ------------------------------------------------------------------ lists and classes
    records = read_lists(cfg.data, num_classes=cfg.model.num_classes)  # class names: read the format's way
    class_names = records["train"].class_names
    num_classes = cfg.model.num_classes or (len(class_names) if class_names else infer_num_classes(records))
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{cfg.data.class_names or cfg.data.train_list}: {len(class_names)} classes but "
                         f"model.num_classes={num_classes}")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes, name=model_name(cfg.model)))

    # ------------------------------------------------------------------ resume: what, from where
    resume_path = tc.resume
    if resume_path is None and tc.auto_resume and (out_dir / "last.pt").is_file():
        resume_path = str(out_dir / "last.pt")
    ckpt = load_training_checkpoint(resume_path) if resume_path else None
    if ckpt is not None:
        if ckpt.get("model_name") != cfg.model.name:
            raise CheckpointError(f"{resume_path}: checkpoint is a {ckpt.get('model_name')!r} model, "
                                  f"config asks for {cfg.model.name!r}")
        if is_main and Path(resume_path).resolve() == (out_dir / "last.pt").resolve():
            repair_best(out_dir, ckpt)

    # ------------------------------------------------------------------ model, optimizer, EMA
    model = build_model(cfg.model.name, num_classes=num_classes, num_segments=cfg.model.num_segments,
                        dropout=cfg.model.dropout, partial_bn=cfg.model.partial_bn, **cfg.model.kwargs)
    if cfg.model.pretrained and ckpt is None:
        report = load_pretrained(model, cfg.model.pretrained)
        if is_main:
            logger.info("loaded pretrained weights from %s: %s", cfg.model.pretrained, report)
    model.input_config = resolve_input_config(cfg.data, model.input_config)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_segments=model.num_segments))
    if ckpt is not None:
        check_resume_config(resume_path, ckpt.get("config"), config_to_dict(cfg), tc.force_resume)
    if is_main:  # the resolved config: repeat the run with `tcpnet train <out>/config.yaml`
        save_config(cfg, out_dir / "config.yaml")
    model.to(device)
    if tc.channels_last:  # 4-D weights only (TCP's temporal conv is a Conv3d)
        for p in model.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    if tc.sync_bn and world > 1:
        if device.type != "cuda":
            logger.warning("train.sync_bn ignored: SyncBatchNorm needs CUDA (device %s)", device)
        else:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, lr=tc.lr, name=tc.optimizer, momentum=tc.momentum,
                                weight_decay=tc.weight_decay, betas=tc.betas, lr_x_factor=tc.lr_x_factor,
                                partial_bn=cfg.model.partial_bn, pretrained_dim=cfg.model.pretrained_dim)
    ema = build_ema(model, tc.ema_decay) if tc.ema_decay else None
    train_model = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    scaler = torch.amp.GradScaler(device.type, enabled=(tc.amp == "fp16"))
    multi_label = cfg.data.multi_label
    criterion = nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()
    mixer = (MixupCutmix(num_classes, tc.mixup_alpha, tc.cutmix_alpha)
             if tc.mixup_alpha > 0 or tc.cutmix_alpha > 0 else None)

    # ------------------------------------------------------------------ data
    datasets = build_datasets(cfg.data, {k: v for k, v in records.items() if k != "test"}, model.input_config,
                              num_classes=num_classes, seed=cfg.seed, max_consecutive_failures=tc.max_consecutive_failures)
    train_set = datasets["train"]
    train_sampler = ResumableSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                     seed=cfg.seed, drop_last=True)
    loader_gen = torch.Generator()
    iters_per_epoch = min(len(train_sampler) // batch_per_rank, tc.max_iters_per_epoch or len(train_sampler))
    if iters_per_epoch == 0:
        raise ValueError(f"{cfg.data.train_list}: {len(train_set)} videos give no full batch of "
                         f"{batch_per_rank} per rank x {world} ranks")

    def train_loader() -> DataLoader:  # one per epoch (or per segment between mid-epoch checkpoints)
        return DataLoader(IndexedSubset(train_set, range(len(train_set))), batch_size=batch_per_rank,
                          sampler=train_sampler, num_workers=cfg.data.num_workers,
                          pin_memory=device.type == "cuda", drop_last=True, generator=loader_gen,
                          worker_init_fn=ignore_stop_signals)

    def describe(indices: torch.Tensor) -> List[str]:
        return [str(train_set.records[int(i)].path) for i in indices]

    val_loader = None
    if "val" in datasets:
        val_shard = IndexedSubset(datasets["val"], shard_indices(len(datasets["val"]), rank, world))
        val_loader = DataLoader(val_shard, batch_size=max(1, cfg.test.batch_size), shuffle=False,
                                num_workers=cfg.data.num_workers, worker_init_fn=ignore_stop_signals)

    # ------------------------------------------------------------------ resume: restore
    start_epoch, start_iter, best_metric, best_epoch = 0, 0, -math.inf, -1
    resumed_sums: Optional[List[float]] = None
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            if "ema" not in ckpt:
                raise CheckpointError(f"{resume_path}: train.ema_decay is set but the checkpoint has no EMA weights")
            ema.load_state_dict(ckpt["ema"])
        start_epoch, start_iter = int(ckpt["epoch"]), int(ckpt.get("iter", 0))
        best_metric, best_epoch = float(ckpt.get("best_metric", -math.inf)), int(ckpt.get("best_epoch", -1))
        rng = ckpt.get("rng") or []
        if len(rng) == world:
            restore_rng_state(rng[rank])
            if "loader" in rng[rank]:
                loader_gen.set_state(rng[rank]["loader"])
        if start_iter and len(ckpt.get("epoch_sums") or []) == world:
            resumed_sums = list(ckpt["epoch_sums"][rank])
        if is_main:
            where = (f"epoch {start_epoch + 1} at iteration {start_iter}/{iters_per_epoch}" if start_iter
                     else f"after epoch {start_epoch}/{tc.epochs}")
            logger.info("resuming %s: %s (best %s so far)", resume_path, where,
                        "-" if best_epoch < 0 else f"{best_metric:.3f} at epoch {best_epoch + 1}")
    metric_name = "mAP" if multi_label else "top1"
    summary = {"output_dir": str(out_dir), "metric_name": metric_name,
               "last_checkpoint": str(out_dir / "last.pt"), "best_checkpoint": str(out_dir / "best.pt"),
               "num_classes": num_classes, "class_names": class_names,
               "ema_checkpoint": str(out_dir / "ema.pt") if ema is not None else None,
               "resumed_from": resume_path}
    if start_epoch >= tc.epochs:
        if is_main:
            logger.warning("%s has already finished %d of train.epochs=%d epochs: nothing to train "
                           "(raise train.epochs to continue, or use another output_dir)",
                           resume_path, start_epoch, tc.epochs)
        if owns_process_group:
            cleanup_distributed()
        return {**summary, "best_metric": None if best_epoch < 0 else best_metric, "best_epoch": best_epoch,
                "final": {}, "model": unwrap_model(model), "last_eval": None, "nothing_to_do": True}

    run_log = RunLogger(out_dir, enabled=is_main,
                        resume_step=start_epoch * iters_per_epoch + start_iter)
    if is_main:
        run_log.log("start", world_size=world, device=str(device), start_epoch=start_epoch, start_iter=start_iter,
                    iters_per_epoch=iters_per_epoch, num_classes=num_classes, resumed_from=resume_path,
                    train_videos=len(train_set), val_videos=len(datasets["val"]) if val_loader else 0,
                    groups=[{k: v for k, v in g.items() if k != "lr"} for g in group_summary(optimizer)])
        for g in group_summary(optimizer):
            logger.info("group %-20s %4d tensors  lr_mult %g  decay_mult %g",
                        g["name"], g["num_tensors"], g["lr_mult"], g["decay_mult"])
        left_out = left_out_parameters(model, cfg.model.partial_bn)
        if left_out:
            logger.info("partial BN: %d trainable tensors kept out of the optimizer as published: %s",
                        len(left_out), ", ".join(left_out))
    use_bar = is_main and sys.stderr.isatty()

    def log_iteration(rec: Dict[str, Any]) -> None:
        rec["clips_per_s"] *= world
        run_log.log("train", **rec)
        run_log.scalars(rec["step"], {"loss/train_iter": rec["loss"], "perf/clips_per_s": rec["clips_per_s"]})
        if not use_bar:
            logger.info("epoch %d iter %d/%d loss %.4f top1 %s lr %.3g %.1f clips/s", rec["epoch"] + 1, rec["iter"],
                        iters_per_epoch, rec["loss"], "-" if rec["top1"] is None else f"{rec['top1']:.2f}",
                        rec["lr"], rec["clips_per_s"])

    def training_state(epoch_done: int, next_iter: int, epoch_sums: Optional[List[float]]) -> Dict[str, Any]:
        """The checkpoint of every rank's position (collective: every rank calls it)."""
        rng = capture_rng_state()
        rng["loader"] = loader_gen.get_state()
        rng_states = all_gather_objects(rng)
        sums_all = all_gather_objects(epoch_sums) if next_iter else None
        if not is_main:
            return {}
        if not _all_finite(model):
            raise NonFiniteError(f"epoch {epoch_done + 1}: the weights are not finite; "
                                 f"{out_dir / 'last.pt'} (the last good checkpoint) was not overwritten")
        state = {**model_file_fields(model, class_names), "multi_label": multi_label,
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "schedule": {"name": tc.lr_schedule, "iters_per_epoch": iters_per_epoch},
                 "epoch": epoch_done, "iter": next_iter, "epoch_sums": sums_all,
                 "best_metric": best_metric, "best_epoch": best_epoch, "metric_name": metric_name,
                 "rng": rng_states, "config": config_to_dict(cfg)}
        if ema is not None:
            state["ema"] = ema.state_dict()
        return state

    last_save = time.time()

    def pause(next_iter: int) -> Optional[str]:
        """After each step: stop on a signal, or write a mid-epoch checkpoint when it is due."""
        due = 0
        if interval is not None:
            kind, every = interval
            due = int(next_iter % every == 0 if kind == "iters" else time.time() - last_save >= 60 * every)
        signal_flag, due = _agree([int(signals.received is not None), due], device)
        return "signal" if signal_flag else ("checkpoint" if due else None)

    def stop_message(epoch: int, it: int) -> str:
        where = f"epoch {epoch + 1} iteration {it}/{iters_per_epoch}" if it else f"the end of epoch {epoch}"
        return (f"stopped on a signal at {where}; checkpoint: {out_dir / 'last.pt'}. Run the same command "
                f"again to resume (train.auto_resume picks up {out_dir / 'last.pt'})")

    # ------------------------------------------------------------------ epochs
    last_record: Dict[str, Any] = {}
    last_eval = None
    try:
        with StopSignals() as signals:
            for epoch in range(start_epoch, tc.epochs):
                if start_iter == 0:
                    _seed_epoch(cfg.seed, epoch, rank, loader_gen)  # a mid-epoch resume restored the RNGs
                train_sampler.set_epoch(epoch)
                if hasattr(train_set, "set_epoch"):
                    train_set.set_epoch(epoch)
                t0, seg_start, sums = time.time(), start_iter, resumed_sums
                while True:  # segments of the epoch between mid-epoch checkpoints
                    train_sampler.start = seg_start * batch_per_rank
                    result = train_one_epoch(train_model, train_loader(), optimizer, criterion=criterion,
                                             scaler=scaler, device=device, epoch=epoch,
                                             iters_per_epoch=iters_per_epoch, tc=tc, multi_label=multi_label,
                                             ema=ema, batch_transform=mixer, log=log_iteration if is_main else None,
                                             progress=use_bar, start_iter=seg_start, sums=sums, pause=pause,
                                             describe=describe)
                    if result["stop"] is None:
                        break
                    state = training_state(epoch, result["next_iter"], result["sums"])
                    if is_main:
                        save_training_checkpoint(state, out_dir / "last.pt")
                        last_save = time.time()
                    if result["stop"] == "signal":
                        raise Preempted(stop_message(epoch, result["next_iter"]), str(out_dir / "last.pt"))
                    seg_start, sums = result["next_iter"], result["sums"]
                start_iter, resumed_sums = 0, None
                train_sampler.start = 0
                epoch_time = time.time() - t0
                totals = {k: sum(r[k] for r in all_gather_objects(result)) for k in _SUMS}
                bad_items = sum(all_gather_objects(_bad_items(train_set, epoch)))

                # -------------------------------------------------------------- validate
                val_metrics: Dict[str, Any] = {}
                if val_loader is not None and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs):
                    res = validate(model, val_loader, device=device, fusion=cfg.test.fusion, amp=tc.amp,
                                   num_classes=num_classes, progress=use_bar)
                    val_metrics = {k: v for k, v in res.metrics.items() if k != "confusion_matrix"}
                    last_eval = res
                    if ema is not None:
                        ema_res = validate(ema.module, val_loader, device=device, fusion=cfg.test.fusion, amp=tc.amp,
                                           num_classes=num_classes, progress=use_bar)
                        val_metrics.update({f"ema_{k}": v for k, v in ema_res.metrics.items()
                                            if k != "confusion_matrix"})
                current = val_metrics.get(metric_name)
                is_best = current is not None and current > best_metric
                if is_best:
                    best_metric, best_epoch = current, epoch

                # -------------------------------------------------------------- record + checkpoint
                n = max(totals["clips"], 1.0)
                record = dict(epoch=epoch, step=(epoch + 1) * iters_per_epoch,
                              lr=base_lr_at(epoch, lr=tc.lr, schedule=tc.lr_schedule, lr_steps=tc.lr_steps,
                                            epochs=tc.epochs),
                              train_loss=totals["loss_sum"] / n,
                              train_top1=None if multi_label else 100 * totals["top1_hits"] / n,
                              train_top5=None if multi_label else 100 * totals["top5_hits"] / n,
                              train_clips=int(totals["clips"]), epoch_time=epoch_time,
                              clips_per_s=totals["clips"] / max(epoch_time, 1e-9), bad_items=bad_items,
                              grad_clipped=int(totals["clipped_steps"]), skipped_steps=int(totals["nonfinite_steps"]),
                              **{f"val_{k}": v for k, v in val_metrics.items()},
                              best_metric=None if best_epoch < 0 else best_metric, best_epoch=best_epoch)
                last_record = record
                state = training_state(epoch + 1, 0, None)
                if is_main:
                    run_log.log("epoch", **record)
                    run_log.scalars(record["step"], {
                        "loss/train": record["train_loss"], "acc/train_top1": record["train_top1"],
                        "acc/train_top5": record["train_top5"], "loss/val": val_metrics.get("loss"),
                        "acc/val_top1": val_metrics.get("top1"), "acc/val_top5": val_metrics.get("top5"),
                        "acc/val_mAP": val_metrics.get("mAP"), "acc/val_ema_top1": val_metrics.get("ema_top1"),
                        "acc/val_best": record["best_metric"],
                        "perf/clips_per_s_epoch": record["clips_per_s"], "data/bad_items": bad_items,
                        **{f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups}})
                    logger.info("epoch %d/%d: train loss %.4f top1 %s | val %s | %.0fs, %.1f clips/s, %d bad videos%s",
                                epoch + 1, tc.epochs, record["train_loss"],
                                "-" if record["train_top1"] is None else f"{record['train_top1']:.2f}",
                                " ".join(f"{k} {v:.3f}" for k, v in val_metrics.items() if isinstance(v, float)) or "-",
                                epoch_time, record["clips_per_s"], bad_items,
                                f", {record['skipped_steps']} non-finite steps skipped" if record["skipped_steps"] else "")
                    ema_fields = model_file_fields(ema.module, class_names) if ema is not None else None
                    save_checkpoint(state, out_dir, is_best=is_best or (val_loader is None and epoch + 1 == tc.epochs),
                                    ema_fields=ema_fields)
                    last_save = time.time()
                if epoch + 1 < tc.epochs and signals.requested(device):
                    raise Preempted(stop_message(epoch + 1, 0), str(out_dir / "last.pt"))

    except BaseException:
        run_log.close()  # flush what was logged; the checkpoints on disk are consistent
        raise

    # ------------------------------------------------------------------ wrap up
    if is_main:
        run_log.log("end", step=tc.epochs * iters_per_epoch, best_metric=None if best_epoch < 0 else best_metric,
                    best_epoch=best_epoch)
        run_log.close()
        if run_log.jsonl_path.is_file():
            plot_curves(run_log.jsonl_path, out_dir / "curves.png")
    if owns_process_group:
        dist.barrier()
        cleanup_distributed()
    return {**summary, "best_metric": None if best_epoch < 0 else best_metric, "best_epoch": best_epoch,
            "final": last_record, "model": unwrap_model(model), "last_eval": last_eval}
