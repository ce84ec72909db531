"""Training: ``train(cfg)`` reads top to bottom like nanoGPT's train.py -- setup, data, model,
optimizer, resume, then the epoch loop (train, validate, checkpoint). Every knob is in the
Config (tcpnet.config); nothing hides in hooks.

Reproducibility: each epoch's data order, augmentation and dropout are pure functions of
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
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tcpnet.config import Config, config_to_dict, save_config
from tcpnet.data.annotations import read_class_names
from tcpnet.engine.checkpoint import (capture_rng_state, load_training_checkpoint, model_fields,
                                      restore_rng_state, save_atomic, unwrap_model)
from tcpnet.engine.distributed import (all_gather_objects, cleanup_distributed, init_distributed,
                                       shard_indices)
from tcpnet.engine.evaluate import autocast_context, evaluate
from tcpnet.engine.logs import RunLogger, plot_curves
from tcpnet.engine.metrics import class_ranks
from tcpnet.engine.optim import base_lr_at, build_optimizer, group_summary, set_lr

logger = logging.getLogger(__name__)

__all__ = ["train", "read_list", "read_lists", "infer_num_classes", "build_datasets", "IndexedSubset", "epoch_seed"]


def epoch_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, epoch, rank, stream)."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(2, np.uint64)[0] >> 1)


class IndexedSubset(Dataset):
    """``dataset[indices[i]]`` plus its dataset index, so evaluation can gather and de-duplicate."""

    def __init__(self, dataset: Dataset, indices: List[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        clip, target = self.dataset[self.indices[i]][:2]
        return clip, target, self.indices[i]


LIST_FORMATS = ("auto", "tsn", "video", "charades")


def read_list(path: str, list_format: str = "auto", class_names=None, num_classes: Optional[int] = None):
    """Records of one list file. auto: a .csv is Charades; lines '<path> <num_frames> <label>' are the
    TSN/TCPNet format (SPEC §5.1); lines '<path> <label>' a video list (label: id or class name)."""
    from tcpnet.data.annotations import read_charades, read_frame_list, read_video_list

    if list_format == "auto":
        if str(path).endswith(".csv"):
            list_format = "charades"
        else:
            with open(path) as f:
                first = next((line.split() for line in f if line.strip()), [])
            tsn = len(first) >= 3 and first[-1].lstrip("-").isdigit() and first[-2].isdigit()
            list_format = "tsn" if tsn else "video"
    if list_format == "tsn":
        return read_frame_list(path)
    if list_format == "video":
        return read_video_list(path, class_names=class_names)
    if list_format == "charades":
        return read_charades(path, num_classes=num_classes or 157)
    raise ValueError(f"data.list_format: expected one of {LIST_FORMATS}, got {list_format!r}")


def read_lists(cfg: Config, class_names=None) -> Dict[str, list]:
    """Records of the train/val/test lists that the config names. With ``data.check_files`` every
    listed video (or frame folder with its frame 1) must exist: all missing ones are reported at
    once, up front, rather than one by one in the middle of an epoch."""
    from tcpnet.data.annotations import check_records

    lists = {"train": cfg.data.train_list, "val": cfg.data.val_list, "test": cfg.data.test_list}
    list_format = "tsn" if (cfg.data.list_format == "auto" and cfg.data.format == "frames") else cfg.data.list_format
    records = {split: read_list(path, list_format, class_names, cfg.model.num_classes)
               for split, path in lists.items() if path}
    if cfg.data.check_files:
        template = cfg.data.frame_template if cfg.data.format != "video" else None
        for split, recs in records.items():
            try:
                check_records(recs, cfg.data.root, frame_template=template)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{lists[split]} (data.{split}_list): {e}") from None
    return records


def infer_num_classes(records: Dict[str, list]) -> int:
    """1 + the largest label in the lists (when neither model.num_classes nor class names are given)."""
    labels = [lab for recs in records.values() for r in recs
              for lab in (r.label if isinstance(r.label, (list, tuple)) else [r.label])]
    if not labels:
        raise ValueError("model.num_classes is not set and cannot be inferred (no labels in the lists)")
    return max(labels) + 1


def build_datasets(cfg: Config, records: Dict[str, list], input_config) -> Dict[str, Dataset]:
    """VideoDatasets per split: train = random segments + multi-scale crop/flip; val/test =
    segment centres + resize/centre crop (SPEC §5.3-5.4); lists drop videos with < 3 frames."""
    from tcpnet.data.dataset import VideoDataset

    return {split: VideoDataset.from_config(
                recs, cfg.data.root, input_config, mode="train" if split == "train" else "val",
                num_segments=cfg.model.num_segments, flip=cfg.data.flip,
                num_classes=cfg.model.num_classes, multi_label=cfg.data.multi_label,
                frame_template=cfg.data.frame_template, seed=cfg.seed,
                max_consecutive_failures=cfg.train.max_consecutive_failures)
            for split, recs in records.items()}


def _bad_items(dataset, epoch: int) -> int:
    """Undecodable videos replaced in ``epoch`` (the dataset counts them across workers)."""
    return len(dataset.bad_items(epoch)) if hasattr(dataset, "bad_items") else 0


def train(cfg: Config) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` for ``cfg.train.epochs``; return a summary dict with the
    best validation metric, the final epoch's record, checkpoint paths, the trained model and the
    last validation EvalResult (``last_eval``; None if no validation ran in this call)."""
    # ------------------------------------------------------------------ setup: ranks, device, dirs
    info = init_distributed(cfg.device)
    owns_process_group = info.world_size > 1
    device, rank, world = info.device, info.rank, info.world_size
    is_main = info.is_main
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

    # ------------------------------------------------------------------ model
    from tcpnet.models import build_model

    class_names = read_class_names(cfg.data.class_names) if cfg.data.class_names else None
    records = read_lists(cfg, class_names)
    if "train" not in records:
        raise ValueError("data.train_list is not set")
    num_classes = cfg.model.num_classes or (len(class_names) if class_names else infer_num_classes(records))
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{cfg.data.class_names}: {len(class_names)} class names but model.num_classes={num_classes}")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))
    if is_main:  # the resolved config: repeat the run with `tcpnet train <out>/config.yaml`
        save_config(cfg, out_dir / "config.yaml")
    model = build_model(cfg.model.name, num_classes=num_classes, num_segments=cfg.model.num_segments,
                        pretrained=cfg.model.pretrained, dropout=cfg.model.dropout,
                        partial_bn=cfg.model.partial_bn, **cfg.model.kwargs)
    if cfg.data.crop_size or cfg.data.scale_size:  # train at another resolution than the default
        model.input_config = dataclasses.replace(
            model.input_config, crop_size=cfg.data.crop_size or model.input_config.crop_size,
            scale_size=cfg.data.scale_size or model.input_config.scale_size)
    input_config = model.input_config
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
    optimizer = build_optimizer(model, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay,
                                lr_x_factor=tc.lr_x_factor, partial_bn=cfg.model.partial_bn,
                                pretrained_dim=cfg.model.pretrained_dim)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    train_model = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    scaler = torch.amp.GradScaler(device.type, enabled=(tc.amp == "fp16"))
    multi_label = cfg.data.multi_label
    criterion = nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()

    # ------------------------------------------------------------------ data
    datasets = build_datasets(cfg, {k: v for k, v in records.items() if k != "test"}, input_config)
    train_set = datasets["train"]
    train_sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                       seed=cfg.seed, drop_last=True)
    loader_gen = torch.Generator()
    train_loader = DataLoader(train_set, batch_size=batch_per_rank, sampler=train_sampler,
                              num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                              drop_last=True, generator=loader_gen,
                              persistent_workers=False)
    iters_per_epoch = len(train_loader)
    if tc.max_iters_per_epoch:
        iters_per_epoch = min(iters_per_epoch, tc.max_iters_per_epoch)
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
        ckpt = load_training_checkpoint(resume_path)
        if ckpt.get("model_name") != cfg.model.name:
            raise ValueError(f"{resume_path}: checkpoint is a {ckpt.get('model_name')!r} model, "
                             f"config asks for {cfg.model.name!r}")
        unwrap_model(model).load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        best_metric = float(ckpt.get("best_metric", -math.inf))
        best_epoch = int(ckpt.get("best_epoch", -1))
        rng = ckpt.get("rng") or []
        if len(rng) == world:
            restore_rng_state(rng[rank])
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

    # ------------------------------------------------------------------ epochs
    use_bar = is_main and sys.stderr.isatty()
    last_record: Dict[str, Any] = {}
    last_eval = None
    for epoch in range(start_epoch, tc.epochs):
        # the epoch's randomness is a function of (seed, epoch, rank) only
        torch.manual_seed(epoch_seed(cfg.seed, epoch, rank))
        np.random.seed(epoch_seed(cfg.seed, epoch, rank) % 2**32)
        random.seed(epoch_seed(cfg.seed, epoch, rank))
        loader_gen.manual_seed(epoch_seed(cfg.seed, epoch, rank, stream=1))
        train_sampler.set_epoch(epoch)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        train_model.train()

        sums = torch.zeros(4, dtype=torch.float64)  # loss*n, top1 hits, top5 hits, n
        n_clipped, t0, t_log = 0, time.time(), time.time()
        bar = None
        if use_bar:
            from tqdm.auto import tqdm
            bar = tqdm(total=iters_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}", dynamic_ncols=True)
        for it, batch in enumerate(train_loader):
            if it >= iters_per_epoch:
                break
            clips, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            base_lr = base_lr_at(epoch, lr=tc.lr, schedule=tc.lr_schedule, lr_steps=tc.lr_steps,
                                 epochs=tc.epochs, warmup_epochs=tc.warmup_epochs, iteration=it,
                                 iters_per_epoch=iters_per_epoch)
            set_lr(optimizer, base_lr)
            do_step = (it + 1) % tc.accumulate_steps == 0 or it + 1 == iters_per_epoch
            sync = contextlib.nullcontext() if (do_step or world == 1) else train_model.no_sync()
            with sync:
                with autocast_context(device, tc.amp):
                    logits = train_model(clips)
                    loss = criterion(logits.float(), targets.float() if multi_label else targets)
                scaler.scale(loss / tc.accumulate_steps).backward()
            if do_step:
                if tc.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    if scaler.is_enabled():  # grads outside the optimizer are still scaled
                        for p in model.parameters():
                            if p.grad is not None and id(p) not in in_optimizer:
                                p.grad.div_(scaler.get_scale())
                    # published: global norm over every parameter with a gradient
                    norm = nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                                    max_norm=tc.clip_grad_norm)
                    n_clipped += int(norm > tc.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)

            # running metrics (local to this rank; all-reduced at the end of the epoch)
            n = clips.shape[0]
            sums[0] += loss.item() * n
            sums[3] += n
            if not multi_label:
                ranks = class_ranks(logits.detach(), targets)
                sums[1] += (ranks < 1).sum().item()
                sums[2] += (ranks < 5).sum().item()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"epoch {epoch + 1} iteration {it + 1}: loss is {loss.item()}")
            if (it + 1) % tc.log_every == 0 or it + 1 == iters_per_epoch:
                dt = time.time() - t_log
                t_log = time.time()
                clips_per_s = world * n * min(tc.log_every, it + 1) / max(dt, 1e-9)
                rec = dict(epoch=epoch, iter=it + 1, step=epoch * iters_per_epoch + it + 1,
                           loss=sums[0].item() / sums[3].item(), lr=base_lr, clips_per_s=clips_per_s,
                           top1=None if multi_label else 100 * sums[1].item() / sums[3].item(),
                           top5=None if multi_label else 100 * sums[2].item() / sums[3].item())
                if is_main:
                    run_log.log("train", **rec)
                    run_log.scalars(rec["step"], {"loss/train_iter": rec["loss"], "perf/clips_per_s": clips_per_s})
                    if bar is None:
                        logger.info("epoch %d iter %d/%d loss %.4f top1 %s lr %.3g %.1f clips/s", epoch + 1, it + 1,
                                    iters_per_epoch, rec["loss"], "-" if rec["top1"] is None else f"{rec['top1']:.2f}",
                                    base_lr, clips_per_s)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums[0].item() / sums[3].item():.3f}",
                                acc=None if multi_label else f"{100 * sums[1].item() / sums[3].item():.1f}")
        if bar is not None:
            bar.close()
        epoch_time = time.time() - t0
        if world > 1:
            gathered = all_gather_objects(sums)
            sums = torch.stack(gathered).sum(0)
        bad_items = sum(all_gather_objects(_bad_items(train_set, epoch)))

        # ------------------------------------------------------------------ validate
        val_metrics: Dict[str, Any] = {}
        if val_loader is not None and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs):
            if world > 1:  # BN running stats are per rank under DDP: evaluate (and save) rank 0's
                for buf in model.buffers():
                    dist.broadcast(buf, src=0)
            res = evaluate(model, val_loader, device=device, fusion="max-prob", amp=None if tc.amp == "none" else tc.amp,
                           num_classes=num_classes, progress=use_bar)
            val_metrics = {k: v for k, v in res.metrics.items() if k != "confusion_matrix"}
            last_eval = res
        metric_name = "mAP" if multi_label else "top1"
        current = val_metrics.get(metric_name)
        is_best = current is not None and current > best_metric
        if is_best:
            best_metric, best_epoch = current, epoch

        # ------------------------------------------------------------------ record + checkpoint
        record = dict(epoch=epoch, lr=base_lr_at(epoch, lr=tc.lr, schedule=tc.lr_schedule, lr_steps=tc.lr_steps,
                                                 epochs=tc.epochs),
                      train_loss=sums[0].item() / max(sums[3].item(), 1),
                      train_top1=None if multi_label else 100 * sums[1].item() / max(sums[3].item(), 1),
                      train_top5=None if multi_label else 100 * sums[2].item() / max(sums[3].item(), 1),
                      train_clips=int(sums[3].item()), epoch_time=epoch_time,
                      clips_per_s=sums[3].item() / max(epoch_time, 1e-9), bad_items=bad_items, grad_clipped=n_clipped,
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
                "acc/val_mAP": val_metrics.get("mAP"), "acc/val_best": record["best_metric"],
                "perf/clips_per_s_epoch": record["clips_per_s"], "data/bad_items": bad_items,
                **{f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups}})
            logger.info("epoch %d/%d: train loss %.4f top1 %s | val %s | %.0fs, %.1f clips/s, %d bad videos",
                        epoch + 1, tc.epochs, record["train_loss"],
                        "-" if record["train_top1"] is None else f"{record['train_top1']:.2f}",
                        " ".join(f"{k} {v:.3f}" for k, v in val_metrics.items() if isinstance(v, float)) or "-",
                        epoch_time, record["clips_per_s"], bad_items)
            ckpt = {**model_fields(model, class_names),
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "schedule": {"name": tc.lr_schedule, "iters_per_epoch": iters_per_epoch},
                    "epoch": epoch + 1, "best_metric": best_metric, "best_epoch": best_epoch,
                    "metric_name": metric_name, "rng": rng_states, "config": config_to_dict(cfg)}
            save_atomic(ckpt, out_dir / "last.pt")
            if is_best or (val_loader is None and epoch + 1 == tc.epochs):
                save_atomic(ckpt, out_dir / "best.pt")

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
            "best_epoch": best_epoch, "metric_name": "mAP" if multi_label else "top1",
            "final": last_record, "last_checkpoint": str(out_dir / "last.pt"),
            "best_checkpoint": str(out_dir / "best.pt"), "num_classes": num_classes,
            "class_names": class_names, "model": unwrap_model(model), "last_eval": last_eval}
