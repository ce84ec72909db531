"""Setting up a training run: every check that can fail before work starts, then ranks, output
directory, lists and classes, the checkpoint to resume, model, optimizer, EMA, data, the
:class:`~tcpnet.engine.state.TrainState` and the loop hooks, gathered in one :class:`Run`."""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from tcpnet.checkpoints import CheckpointError, load_pretrained
from tcpnet.config import Config, ConfigError, config_to_dict, model_name, save_config
from tcpnet.data.build import (IndexedSubset, build_datasets, check_data_config, infer_num_classes,
                               read_lists, resolve_input_config)
from tcpnet.engine.checkpoint import (OutputLock, check_fresh_output_dir, check_resume_config,
                                      load_training_checkpoint, prepare_output_dir)
from tcpnet.engine.distributed import DistInfo, init_distributed, shard_indices
from tcpnet.engine.ema import build_ema
from tcpnet.engine.hooks import Hook, build_hooks
from tcpnet.engine.logs import RunLogger
from tcpnet.engine.optim import build_optimizer
from tcpnet.engine.preemption import StopSignals, ignore_stop_signals
from tcpnet.engine.resume import restore
from tcpnet.engine.state import DataPosition, TrainState
from tcpnet.engine.stats import CORE_STATS, RunningStats
from tcpnet.models import build_model, check_model_name
from tcpnet.utils.malloc import retain_freed_memory
from tcpnet.utils.plugins import load_plugins

logger = logging.getLogger(__name__)

__all__ = ["Run", "setup", "epoch_seed", "seed_epoch", "ResumableSampler"]


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


def seed_epoch(seed: int, epoch: int, rank: int, loader_gen: torch.Generator) -> None:
    """Make the epoch's randomness (order, augmentation, mixing, dropout) a function of (seed, epoch, rank)."""
    torch.manual_seed(epoch_seed(seed, epoch, rank))
    np.random.seed(epoch_seed(seed, epoch, rank) % 2**32)
    random.seed(epoch_seed(seed, epoch, rank))
    loader_gen.manual_seed(epoch_seed(seed, epoch, rank, stream=1))


@dataclass
class Run:
    """Everything ``fit`` needs: the resolved config, the state, the data and the process's place."""

    cfg: Config
    dist: DistInfo
    out_dir: Path
    class_names: Optional[List[str]]
    num_classes: int
    state: Optional[TrainState] = None
    train_model: Optional[nn.Module] = None  # the model (its head + fc on cached maps), or its DDP wrapper
    criterion: Optional[Callable[..., torch.Tensor]] = None
    datasets: Dict[str, Any] = field(default_factory=dict)
    train_sampler: Optional[ResumableSampler] = None
    val_loader: Optional[DataLoader] = None
    hooks: List[Hook] = field(default_factory=list)
    resume_path: Optional[str] = None
    ckpt: Optional[Dict[str, Any]] = None
    lock: Optional[OutputLock] = None
    signals: Optional[StopSignals] = None
    run_log: Optional[RunLogger] = None
    last_save: float = field(default_factory=time.time)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def multi_label(self) -> bool:
        return self.cfg.data.multi_label

    @property
    def metric_name(self) -> str:
        return "mAP" if self.multi_label else "top1"

    @property
    def iters_per_epoch(self) -> int:
        return self.state.position.iters_per_epoch

    def train_loader(self) -> DataLoader:
        """A loader for the rest of the current epoch (one per epoch or mid-epoch segment)."""
        pos = self.state.position
        return DataLoader(IndexedSubset(self.datasets["train"], range(len(self.datasets["train"]))),
                          batch_size=pos.batch_per_rank, sampler=self.train_sampler,
                          num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                          drop_last=True, generator=self.state.loader_generator,
                          worker_init_fn=ignore_stop_signals)

    def describe(self, indices: torch.Tensor) -> List[str]:
        """The train videos of a batch, by dataset index."""
        return [str(self.datasets["train"].records[int(i)].path) for i in indices]


# ---------------------------------------------------------------------------------- checks
def check_config(cfg: Config) -> Config:
    """Everything that needs no data and no model: plugins loaded, names known, required keys set."""
    load_plugins(cfg.imports)
    check_data_config(cfg.data)
    try:
        check_model_name(model_name(cfg.model))
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    if not cfg.data.train_list:
        raise ConfigError("data.train_list is not set: a training run needs at least data.train_list "
                          "(and usually data.val_list and data.root)")
    return cfg


def _start_process(cfg: Config) -> DistInfo:
    if cfg.retain_freed_memory:  # activations re-used in place instead of page-faulted in every step
        retain_freed_memory()
    info = init_distributed(cfg.device)
    if cfg.train.batch_size % info.world_size:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} must be divisible by the world size "
                         f"{info.world_size}")
    if cfg.train.amp == "fp16" and info.device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use train.amp=bf16 on CPU")
    return info


def _read_classes(cfg: Config) -> tuple:
    records = read_lists(cfg.data, num_classes=cfg.model.num_classes)  # class names: read the format's way
    class_names = records["train"].class_names
    num_classes = cfg.model.num_classes or (len(class_names) if class_names else infer_num_classes(records))
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{cfg.data.class_names or cfg.data.train_list}: {len(class_names)} classes but "
                         f"model.num_classes={num_classes}")
    return records, class_names, num_classes


def _find_resume(run: Run) -> None:
    """The checkpoint to continue from (``train.resume``, else ``<output_dir>/last.pt`` with
    ``train.auto_resume``); a fresh run refuses an output_dir holding another run's files."""
    tc, out = run.cfg.train, run.out_dir
    path = tc.resume
    if path is None and tc.auto_resume and (out / "last.pt").is_file():
        path = str(out / "last.pt")
    if path is None:
        if run.is_main:
            check_fresh_output_dir(out)
        return
    run.resume_path, run.ckpt = path, load_training_checkpoint(path)
    if run.ckpt.get("model_name") != run.cfg.model.name:
        raise CheckpointError(f"{path}: checkpoint is a {run.ckpt.get('model_name')!r} model, "
                              f"config asks for {run.cfg.model.name!r}")


def _build_model(run: Run) -> nn.Module:
    cfg, tc = run.cfg, run.cfg.train
    torch.manual_seed(cfg.seed)  # model initialisation is the same on every rank
    model = build_model(cfg.model.name, num_classes=run.num_classes, num_segments=cfg.model.num_segments,
                        dropout=cfg.model.dropout, partial_bn=cfg.model.partial_bn, **cfg.model.kwargs)
    if cfg.model.pretrained and run.ckpt is None:
        report = load_pretrained(model, cfg.model.pretrained)
        if run.is_main:
            logger.info("loaded pretrained weights from %s: %s", cfg.model.pretrained, report)
    model.input_config = resolve_input_config(cfg.data, model.input_config)
    model.to(run.device)
    if tc.channels_last:  # 4-D weights only (TCP's temporal conv is a Conv3d)
        for p in model.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    if tc.sync_bn and run.dist.world_size > 1:
        if run.device.type != "cuda":
            logger.warning("train.sync_bn ignored: SyncBatchNorm needs CUDA (device %s)", run.device)
        else:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _resolve_config(run: Run, model: nn.Module) -> None:
    """The config as run (model name, T and class count filled in); checked against the
    checkpoint's and saved as ``config.yaml``, so ``tcpnet train <out>/config.yaml`` repeats it."""
    mc = dataclasses.replace(run.cfg.model, name=model_name(run.cfg.model), num_classes=run.num_classes,
                             num_segments=model.num_segments)
    run.cfg = dataclasses.replace(run.cfg, model=mc)
    if run.ckpt is not None:
        check_resume_config(run.resume_path, run.ckpt.get("config"), config_to_dict(run.cfg),
                            run.cfg.train.force_resume)
    if run.is_main:
        save_config(run.cfg, run.out_dir / "config.yaml")


def _build_data(run: Run, records: Dict[str, Any], model: nn.Module) -> DataPosition:
    cfg, info = run.cfg, run.dist
    run.datasets = build_datasets(cfg.data, {k: v for k, v in records.items() if k != "test"}, model.input_config,
                                  num_classes=run.num_classes, seed=cfg.seed,
                                  max_consecutive_failures=cfg.train.max_consecutive_failures)
    train_set = run.datasets["train"]
    run.train_sampler = ResumableSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                         seed=cfg.seed, drop_last=True)
    batch_per_rank = cfg.train.batch_size // info.world_size
    iters = min(len(run.train_sampler) // batch_per_rank, cfg.train.max_iters_per_epoch or len(run.train_sampler))
    if iters == 0:
        raise ValueError(f"{cfg.data.train_list}: {len(train_set)} videos give no full batch of "
                         f"{batch_per_rank} per rank x {info.world_size} ranks")
    if "val" in run.datasets:
        val_shard = IndexedSubset(run.datasets["val"], shard_indices(len(run.datasets["val"]), info.rank,
                                                                     info.world_size))
        run.val_loader = DataLoader(val_shard, batch_size=max(1, cfg.test.batch_size), shuffle=False,
                                    num_workers=cfg.data.num_workers, worker_init_fn=ignore_stop_signals)
    return DataPosition(world_size=info.world_size, batch_per_rank=batch_per_rank, num_videos=len(train_set),
                        iters_per_epoch=iters)


def _build_state(run: Run, model: nn.Module, position: DataPosition) -> TrainState:
    cfg, tc = run.cfg, run.cfg.train
    if tc.freeze_backbone:
        model.freeze_backbone()
    try:
        optimizer = build_optimizer(model, lr=tc.lr, name=tc.optimizer, momentum=tc.momentum,
                                    weight_decay=tc.weight_decay, betas=tc.betas, lr_x_factor=tc.lr_x_factor,
                                    bias_lr_mult=tc.bias_lr_mult,
                                    partial_bn=cfg.model.partial_bn, pretrained_dim=cfg.model.pretrained_dim,
                                    layer_decay=tc.layer_decay)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    state = TrainState(model=model, optimizer=optimizer,
                       scaler=torch.amp.GradScaler(run.device.type, enabled=(tc.amp == "fp16")),
                       stats=RunningStats(CORE_STATS), ema=build_ema(model, tc.ema_decay) if tc.ema_decay else None,
                       position=position)
    run.state = state
    run.hooks = build_hooks(run)
    state.stats = RunningStats([*CORE_STATS, *(s for h in run.hooks for s in h.stats)], device=run.device)
    return state


def setup(cfg: Config) -> Run:
    """Checks, process group, output directory, classes, resume, model, data, state and hooks."""
    cfg = check_config(cfg)
    info = _start_process(cfg)
    run = Run(cfg=cfg, dist=info, out_dir=Path(cfg.output_dir), class_names=None, num_classes=0)
    if run.is_main:
        prepare_output_dir(run.out_dir)
        run.lock = OutputLock.acquire(run.out_dir)
        (run.out_dir / "preempted.json").unlink(missing_ok=True)  # a stop of an earlier attempt
    try:
        records, run.class_names, run.num_classes = _read_classes(cfg)
        run.cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=model_name(cfg.model)))
        _find_resume(run)
        model = _build_model(run)
        _resolve_config(run, model)
        position = _build_data(run, records, model)
        state = _build_state(run, model, position)
        trained = model.head_classifier() if cfg.data.cache_features else model  # cached maps: head + fc only
        run.train_model = nn.parallel.DistributedDataParallel(
            trained, device_ids=[run.device.index] if run.device.type == "cuda" else None) \
            if info.world_size > 1 else trained
        run.criterion = nn.BCEWithLogitsLoss() if run.multi_label else nn.CrossEntropyLoss()
        if run.ckpt is not None:
            restore(run, state)
    except BaseException:
        if run.lock is not None:
            run.lock.release()
        raise
    return run
