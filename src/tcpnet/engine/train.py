"""Training: ``train(cfg)`` reads top to bottom like nanoGPT's train.py -- setup, data, model,
optimizer, resume, then the epoch loop: :func:`train_one_epoch`, :func:`validate`,
:func:`save_checkpoint`. Every knob is in the Config (tcpnet.config); EMA and mixup/cutmix are
arguments of the epoch function, not hooks.

Reproducibility: each epoch's data order, augmentation, mixing and dropout are pure functions of
(seed, epoch, rank), so resuming from the last epoch checkpoint (written atomically every epoch)
repeats the rest of the run exactly, even after a SIGKILL in the middle of an epoch.
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
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler

from tcpnet.checkpoints import CheckpointError, load_pretrained
from tcpnet.checkpoints.io import model_file_fields
from tcpnet.config import Config, TrainConfig, config_to_dict, save_config
from tcpnet.data.build import (IndexedSubset, build_datasets, check_data_config, infer_num_classes,
                               read_lists, resolve_input_config)
from tcpnet.engine.checkpoint import (capture_rng_state, load_training_checkpoint, restore_rng_state,
                                      save_training_checkpoint)
from tcpnet.engine.distributed import (all_gather_objects, cleanup_distributed, init_distributed,
                                       shard_indices)
from tcpnet.engine.evaluate import EvalResult, autocast_context, evaluate
from tcpnet.engine.logs import RunLogger, plot_curves
from tcpnet.engine.metrics import class_ranks
from tcpnet.engine.mixup import MixupCutmix
from tcpnet.engine.optim import base_lr_at, build_optimizer, group_summary, left_out_parameters, set_lr
from tcpnet.models import build_model, unwrap_model

logger = logging.getLogger(__name__)

__all__ = ["train", "train_one_epoch", "validate", "save_checkpoint", "build_ema", "epoch_seed"]


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


def _loss_targets(targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return targets.float() if multi_label else targets


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                    criterion: nn.Module, scaler: torch.amp.GradScaler, device: torch.device,
                    epoch: int, iters_per_epoch: int, tc: TrainConfig, multi_label: bool = False,
                    ema: Optional[AveragedModel] = None, batch_transform: Optional[MixupCutmix] = None,
                    log: Optional[Callable[[Dict[str, Any]], None]] = None,
                    progress: bool = False) -> Dict[str, float]:
    """One pass over ``loader`` (at most ``iters_per_epoch`` batches); returns this rank's sums.

    Running loss and hit counts stay on the device; the host reads them only every
    ``tc.log_every`` iterations (each read is a device sync). ``batch_transform`` (mixup/cutmix)
    turns hard labels into soft targets for the loss; accuracy is counted on the hard labels.
    ``ema`` is updated after every optimizer step.
    """
    bare = unwrap_model(model)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    distributed = isinstance(model, nn.parallel.DistributedDataParallel)
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss*n, top1, top5, n, clipped steps
    t_log = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=iters_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}", dynamic_ncols=True)

    def summary(step_clips: int, dt: float) -> Dict[str, Any]:
        s = sums.tolist()  # the sync point
        n = max(s[3], 1.0)
        return dict(loss=s[0] / n, top1=None if multi_label else 100 * s[1] / n,
                    top5=None if multi_label else 100 * s[2] / n, clips_per_s=step_clips / max(dt, 1e-9))

    model.train()
    for it, batch in enumerate(loader):
        if it >= iters_per_epoch:
            break
        clips = batch[0].to(device, non_blocking=True)
        targets = batch[1].to(device, non_blocking=True)
        loss_targets = _loss_targets(targets, multi_label)
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
        if do_step:
            if tc.clip_grad_norm:
                scaler.unscale_(optimizer)
                if scaler.is_enabled():  # grads outside the optimizer are still scaled
                    for p in bare.parameters():
                        if p.grad is not None and id(p) not in in_optimizer:
                            p.grad.div_(scaler.get_scale())
                # published: global norm over every parameter with a gradient
                norm = nn.utils.clip_grad_norm_([p for p in bare.parameters() if p.grad is not None],
                                                max_norm=tc.clip_grad_norm)
                sums[4] += (norm > tc.clip_grad_norm).to(sums.dtype)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(bare)

        n = clips.shape[0]
        with torch.no_grad():
            sums[0] += loss.detach().double() * n
            sums[3] += n
            if not multi_label:
                ranks = class_ranks(logits.detach(), targets)
                sums[1] += (ranks < 1).sum()
                sums[2] += (ranks < 5).sum()
        last = it + 1 == iters_per_epoch
        if (it + 1) % tc.log_every == 0 or last:
            rec = summary(n * min(tc.log_every, it + 1), time.time() - t_log)
            t_log = time.time()
            if not math.isfinite(rec["loss"]):
                raise FloatingPointError(f"epoch {epoch + 1} iteration {it + 1}: the running loss is {rec['loss']}")
            if log is not None:
                log(dict(epoch=epoch, iter=it + 1, step=epoch * iters_per_epoch + it + 1, lr=base_lr, **rec))
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=None if multi_label else f"{rec['top1']:.1f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    s = sums.tolist()
    return {"loss_sum": s[0], "top1_hits": s[1], "top5_hits": s[2], "clips": s[3], "clipped_steps": s[4]}


def validate(model: nn.Module, loader: DataLoader, *, device: torch.device, fusion: str,
             amp: str, num_classes: int, progress: bool = False) -> EvalResult:
    """Evaluate ``model`` on the validation shard of this rank with the test fusion
    (``test.fusion``); under DDP rank 0's BN statistics are used on every rank."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
    return evaluate(model, loader, device=device, fusion=fusion, amp=None if amp == "none" else amp,
                    num_classes=num_classes, progress=progress)


def save_checkpoint(ckpt: Dict[str, Any], out_dir: Path, *, is_best: bool,
                    ema_fields: Optional[Dict[str, Any]] = None) -> Dict[str, Path]:
    """Write ``last.pt`` (and ``best.pt`` when ``is_best``) atomically, plus the EMA weights as
    the model file ``ema.pt``; return the paths written."""
    written = {"last": save_training_checkpoint(ckpt, out_dir / "last.pt")}
    if is_best:
        written["best"] = save_training_checkpoint(ckpt, out_dir / "best.pt")
    if ema_fields is not None:
        written["ema"] = save_training_checkpoint(ema_fields, out_dir / "ema.pt")
    return written


def _resume(path: str, cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, ema: Optional[AveragedModel], rank: int, world: int) -> Dict[str, Any]:
    """Restore model, optimizer, scaler, EMA and RNG from a training checkpoint; return its
    epoch and best metric."""
    ckpt = load_training_checkpoint(path)
    if ckpt.get("model_name") != cfg.model.name:
        raise CheckpointError(f"{path}: checkpoint is a {ckpt.get('model_name')!r} model, "
                              f"config asks for {cfg.model.name!r}")
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    if ema is not None:
        if "ema" not in ckpt:
            raise CheckpointError(f"{path}: train.ema_decay is set but the checkpoint has no EMA weights")
        ema.load_state_dict(ckpt["ema"])
    rng = ckpt.get("rng") or []
    if len(rng) == world:
        restore_rng_state(rng[rank])
    return {"epoch": int(ckpt["epoch"]), "best_metric": float(ckpt.get("best_metric", -math.inf)),
            "best_epoch": int(ckpt.get("best_epoch", -1))}


def train(cfg: Config) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` for ``cfg.train.epochs``; return a summary dict with the
    best validation metric, the final epoch's record, checkpoint paths, the trained model and the
    last validation EvalResult (``last_eval``; None if no validation ran in this call)."""
    # ------------------------------------------------------------------ setup: ranks, device, dirs
    check_data_config(cfg.data)
    info = init_distributed(cfg.device)
    owns_process_group = info.world_size > 1
    device, rank, world, is_main = info.device, info.rank, info.world_size, info.is_main
    out_dir = Path(cfg.output_dir)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    if tc.batch_size % world:
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the world size {world}")
    batch_per_rank = tc.batch_size // world
    if tc.amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use train.amp=bf16 on CPU")
    torch.manual_seed(cfg.seed)  # model initialisation is the same on every rank

    # ------------------------------------------------------------------ lists and classes
    if not cfg.data.train_list:
        raise ValueError("data.train_list is not set")
    records = read_lists(cfg.data, num_classes=cfg.model.num_classes)  # class names: read the format's way
    class_names = records["train"].class_names
    num_classes = cfg.model.num_classes or (len(class_names) if class_names else infer_num_classes(records))
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{cfg.data.class_names or cfg.data.train_list}: {len(class_names)} classes but "
                         f"model.num_classes={num_classes}")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))
    if is_main:  # the resolved config: repeat the run with `tcpnet train <out>/config.yaml`
        save_config(cfg, out_dir / "config.yaml")

    # ------------------------------------------------------------------ model, optimizer, EMA
    model = build_model(cfg.model.name, num_classes=num_classes, num_segments=cfg.model.num_segments,
                        dropout=cfg.model.dropout, partial_bn=cfg.model.partial_bn, **cfg.model.kwargs)
    if cfg.model.pretrained:
        report = load_pretrained(model, cfg.model.pretrained)
        if is_main:
            logger.info("loaded pretrained weights from %s: %s", cfg.model.pretrained, report)
    model.input_config = resolve_input_config(cfg.data, model.input_config)
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
                              num_segments=cfg.model.num_segments, num_classes=num_classes, seed=cfg.seed,
                              max_consecutive_failures=tc.max_consecutive_failures)
    train_set = datasets["train"]
    train_sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                       seed=cfg.seed, drop_last=True)
    loader_gen = torch.Generator()
    train_loader = DataLoader(train_set, batch_size=batch_per_rank, sampler=train_sampler,
                              num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                              drop_last=True, generator=loader_gen)
    iters_per_epoch = min(len(train_loader), tc.max_iters_per_epoch or len(train_loader))
    if iters_per_epoch == 0:
        raise ValueError(f"{cfg.data.train_list}: {len(train_set)} videos give no full batch of "
                         f"{batch_per_rank} per rank x {world} ranks")
    val_loader = None
    if "val" in datasets:
        val_shard = IndexedSubset(datasets["val"], shard_indices(len(datasets["val"]), rank, world))
        val_loader = DataLoader(val_shard, batch_size=max(1, cfg.test.batch_size),
                                num_workers=cfg.data.num_workers, shuffle=False)

    # ------------------------------------------------------------------ resume
    start_epoch, best_metric, best_epoch = 0, -math.inf, -1
    resume_path = tc.resume
    if resume_path is None and tc.auto_resume and (out_dir / "last.pt").is_file():
        resume_path = str(out_dir / "last.pt")
    if resume_path:
        state = _resume(resume_path, cfg, model, optimizer, scaler, ema, rank, world)
        start_epoch, best_metric, best_epoch = state["epoch"], state["best_metric"], state["best_epoch"]
        if is_main:
            logger.info("resumed from %s at epoch %d (best %.3f)", resume_path, start_epoch, best_metric)

    run_log = RunLogger(out_dir, enabled=is_main)
    if is_main:
        run_log.log("start", world_size=world, device=str(device), start_epoch=start_epoch,
                    iters_per_epoch=iters_per_epoch, num_classes=num_classes,
                    train_videos=len(train_set), val_videos=len(datasets["val"]) if val_loader else 0,
                    groups=[{k: v for k, v in g.items() if k != "lr"} for g in group_summary(optimizer)])
        for g in group_summary(optimizer):
            logger.info("group %-20s %4d tensors  lr_mult %g  decay_mult %g",
                        g["name"], g["num_tensors"], g["lr_mult"], g["decay_mult"])
        left_out = left_out_parameters(model, cfg.model.partial_bn)
        if left_out:
            logger.info("partial BN: %d trainable tensors kept out of the optimizer as published: %s",
                        len(left_out), ", ".join(left_out))

    def log_iteration(rec: Dict[str, Any]) -> None:
        rec["clips_per_s"] *= world
        run_log.log("train", **rec)
        run_log.scalars(rec["step"], {"loss/train_iter": rec["loss"], "perf/clips_per_s": rec["clips_per_s"]})
        if not use_bar:
            logger.info("epoch %d iter %d/%d loss %.4f top1 %s lr %.3g %.1f clips/s", rec["epoch"] + 1, rec["iter"],
                        iters_per_epoch, rec["loss"], "-" if rec["top1"] is None else f"{rec['top1']:.2f}",
                        rec["lr"], rec["clips_per_s"])

    # ------------------------------------------------------------------ epochs
    use_bar = is_main and sys.stderr.isatty()
    metric_name = "mAP" if multi_label else "top1"
    last_record: Dict[str, Any] = {}
    last_eval = None
    for epoch in range(start_epoch, tc.epochs):
        _seed_epoch(cfg.seed, epoch, rank, loader_gen)
        train_sampler.set_epoch(epoch)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        t0 = time.time()
        sums = train_one_epoch(train_model, train_loader, optimizer, criterion=criterion, scaler=scaler,
                               device=device, epoch=epoch, iters_per_epoch=iters_per_epoch, tc=tc,
                               multi_label=multi_label, ema=ema, batch_transform=mixer,
                               log=log_iteration if is_main else None, progress=use_bar)
        epoch_time = time.time() - t0
        if world > 1:
            gathered = all_gather_objects(sums)
            sums = {k: sum(d[k] for d in gathered) for k in sums}
        bad_items = sum(all_gather_objects(_bad_items(train_set, epoch)))

        # ------------------------------------------------------------------ validate
        val_metrics: Dict[str, Any] = {}
        if val_loader is not None and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs):
            res = validate(model, val_loader, device=device, fusion=cfg.test.fusion, amp=tc.amp,
                           num_classes=num_classes, progress=use_bar)
            val_metrics = {k: v for k, v in res.metrics.items() if k != "confusion_matrix"}
            last_eval = res
            if ema is not None:
                ema_res = validate(ema.module, val_loader, device=device, fusion=cfg.test.fusion, amp=tc.amp,
                                   num_classes=num_classes, progress=use_bar)
                val_metrics.update({f"ema_{k}": v for k, v in ema_res.metrics.items() if k != "confusion_matrix"})
        current = val_metrics.get(metric_name)
        is_best = current is not None and current > best_metric
        if is_best:
            best_metric, best_epoch = current, epoch

        # ------------------------------------------------------------------ record + checkpoint
        n = max(sums["clips"], 1.0)
        record = dict(epoch=epoch, lr=base_lr_at(epoch, lr=tc.lr, schedule=tc.lr_schedule, lr_steps=tc.lr_steps,
                                                 epochs=tc.epochs),
                      train_loss=sums["loss_sum"] / n,
                      train_top1=None if multi_label else 100 * sums["top1_hits"] / n,
                      train_top5=None if multi_label else 100 * sums["top5_hits"] / n,
                      train_clips=int(sums["clips"]), epoch_time=epoch_time,
                      clips_per_s=sums["clips"] / max(epoch_time, 1e-9), bad_items=bad_items,
                      grad_clipped=int(sums["clipped_steps"]),
                      **{f"val_{k}": v for k, v in val_metrics.items()},
                      best_metric=None if best_epoch < 0 else best_metric, best_epoch=best_epoch)
        last_record = record
        rng_states = all_gather_objects(capture_rng_state())
        if is_main:
            run_log.log("epoch", **record)
            run_log.scalars(epoch + 1, {
                "loss/train": record["train_loss"], "acc/train_top1": record["train_top1"],
                "acc/train_top5": record["train_top5"], "loss/val": val_metrics.get("loss"),
                "acc/val_top1": val_metrics.get("top1"), "acc/val_top5": val_metrics.get("top5"),
                "acc/val_mAP": val_metrics.get("mAP"), "acc/val_ema_top1": val_metrics.get("ema_top1"),
                "acc/val_best": record["best_metric"],
                "perf/clips_per_s_epoch": record["clips_per_s"], "data/bad_items": bad_items,
                **{f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups}})
            logger.info("epoch %d/%d: train loss %.4f top1 %s | val %s | %.0fs, %.1f clips/s, %d bad videos",
                        epoch + 1, tc.epochs, record["train_loss"],
                        "-" if record["train_top1"] is None else f"{record['train_top1']:.2f}",
                        " ".join(f"{k} {v:.3f}" for k, v in val_metrics.items() if isinstance(v, float)) or "-",
                        epoch_time, record["clips_per_s"], bad_items)
            ckpt = {**model_file_fields(model, class_names),
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "schedule": {"name": tc.lr_schedule, "iters_per_epoch": iters_per_epoch},
                    "epoch": epoch + 1, "best_metric": best_metric, "best_epoch": best_epoch,
                    "metric_name": metric_name, "rng": rng_states, "config": config_to_dict(cfg)}
            ema_fields = None
            if ema is not None:
                ckpt["ema"] = ema.state_dict()
                ema_fields = model_file_fields(ema.module, class_names)
            save_checkpoint(ckpt, out_dir, is_best=is_best or (val_loader is None and epoch + 1 == tc.epochs),
                            ema_fields=ema_fields)

    # ------------------------------------------------------------------ wrap up
    if is_main:
        run_log.log("end", best_metric=None if best_epoch < 0 else best_metric, best_epoch=best_epoch)
        run_log.close()
        if run_log.jsonl_path.is_file():
            plot_curves(run_log.jsonl_path, out_dir / "curves.png")
    if owns_process_group:
        dist.barrier()
        cleanup_distributed()
    return {"output_dir": str(out_dir), "best_metric": None if best_epoch < 0 else best_metric,
            "best_epoch": best_epoch, "metric_name": metric_name,
            "final": last_record, "last_checkpoint": str(out_dir / "last.pt"),
            "best_checkpoint": str(out_dir / "best.pt"), "num_classes": num_classes,
            "class_names": class_names, "model": unwrap_model(model), "last_eval": last_eval,
            "ema_checkpoint": str(out_dir / "ema.pt") if ema is not None else None}
