"""The training loop: iterations of one epoch over a :class:`~tcpnet.engine.state.TrainState`.

Each iteration: batch to device -> ``before_forward`` hooks (mixup) -> learning rate -> forward,
loss, backward -> on an optimizer step, unscale and the global gradient norm -> ``after_backward``
hooks (clipping, the non-finite guard, gradient-norm logging) -> optimizer step and ``after_step``
hooks (EMA), or a skip -> running statistics on the device -> a log record every
``train.log_every`` iterations (the one host sync) -> ``after_iteration`` hooks (stop signals,
mid-epoch checkpoints).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import nn

from tcpnet.config import TrainConfig
from tcpnet.engine.evaluate import autocast_context
from tcpnet.engine.hooks import Hook, Step
from tcpnet.engine.metrics import class_ranks
from tcpnet.engine.optim import base_lr_at, set_lr
from tcpnet.engine.state import TrainState

__all__ = ["LoopContext", "train_one_epoch", "read_stats"]


@dataclass
class LoopContext:
    """What the loop needs besides the state: the module that runs the forward pass (the model,
    or its DDP wrapper), the loss, the recipe and the hooks."""

    model: nn.Module
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    train: TrainConfig
    iters_per_epoch: int
    multi_label: bool = False
    hooks: Sequence[Hook] = ()
    log: Optional[Callable[[Dict[str, Any]], None]] = None
    progress: bool = False
    _in_optimizer: Optional[set] = field(default=None, repr=False)


def read_stats(state: TrainState, ctx: LoopContext, record: Dict[str, Any]) -> Dict[str, float]:
    """Read the running statistics on the host (a sync) and let every hook see them (the
    non-finite guard raises here)."""
    values = state.stats.read()
    for h in ctx.hooks:
        h.on_read(values, record)
    return values


def _make_step(batch: Sequence[Any], it: int, state: TrainState, ctx: LoopContext) -> Step:
    clips = batch[0].to(ctx.device, non_blocking=True)
    targets = batch[1].to(ctx.device, non_blocking=True)
    tc = ctx.train
    return Step(epoch=state.epoch, iteration=it, clips=clips, targets=targets,
                loss_targets=targets.float() if ctx.multi_label else targets,
                indices=batch[2] if len(batch) > 2 else None,
                do_step=(it + 1) % tc.accumulate_steps == 0 or it + 1 == ctx.iters_per_epoch,
                last=it + 1 == ctx.iters_per_epoch)


def _forward_backward(step: Step, state: TrainState, ctx: LoopContext) -> None:
    tc = ctx.train
    step.lr = base_lr_at(step.epoch, lr=tc.lr, schedule=tc.lr_schedule, lr_steps=tc.lr_steps, epochs=tc.epochs,
                         warmup_epochs=tc.warmup_epochs, iteration=step.iteration,
                         iters_per_epoch=ctx.iters_per_epoch)
    set_lr(state.optimizer, step.lr)
    distributed = isinstance(ctx.model, nn.parallel.DistributedDataParallel)
    sync = ctx.model.no_sync() if (distributed and not step.do_step) else contextlib.nullcontext()
    with sync:
        with autocast_context(ctx.device, tc.amp):
            step.logits = ctx.model(step.clips)
            step.loss = ctx.criterion(step.logits.float(), step.loss_targets)
        state.scaler.scale(step.loss / tc.accumulate_steps).backward()
    step.finite = torch.isfinite(step.loss.detach())


def _unscale_and_norm(step: Step, state: TrainState, ctx: LoopContext) -> None:
    """Unscale the gradients (also of trainable parameters outside the optimizer) and take the
    global norm over every parameter with a gradient (published: clipping uses that norm)."""
    scaler = state.scaler
    scaler.unscale_(state.optimizer)
    if ctx._in_optimizer is None:
        ctx._in_optimizer = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
    if scaler.is_enabled():  # grads outside the optimizer are still scaled
        for p in state.model.parameters():
            if p.grad is not None and id(p) not in ctx._in_optimizer:
                p.grad.div_(scaler.get_scale())
    step.params = [p for p in state.model.parameters() if p.grad is not None]
    step.grad_norm = (nn.utils.get_total_norm([p.grad for p in step.params]) if step.params
                      else torch.zeros((), device=ctx.device))


def _update(step: Step, state: TrainState, ctx: LoopContext) -> None:
    """Optimizer step (or skip) and the running statistics of a non-skipped iteration."""
    opt, scaler = state.optimizer, state.scaler
    if step.skip:
        opt.zero_grad(set_to_none=True)
        if step.do_step and scaler.is_enabled():
            scaler.update()
        return
    if step.do_step:
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        for h in ctx.hooks:
            h.after_step(step, state.stats)
    with torch.no_grad():
        n = step.clips.shape[0]
        state.stats.add("loss_sum", step.loss.detach().double() * n)
        state.stats.add("clips", float(n))
        if not ctx.multi_label:
            ranks = class_ranks(step.logits.detach(), step.targets)
            state.stats.add("top1_hits", (ranks < 1).sum())
            state.stats.add("top5_hits", (ranks < 5).sum())


class _LogClock:
    """Iterations and wall time since the last log record (for clips/s)."""

    def __init__(self, start_iter: int) -> None:
        self.t, self.it = time.time(), start_iter

    def rate(self, it: int, batch: int) -> float:
        r = batch * (it - self.it) / max(time.time() - self.t, 1e-9)
        self.t, self.it = time.time(), it
        return r


def _log(step: Step, state: TrainState, ctx: LoopContext, clock: _LogClock, bar: Any) -> None:
    it = step.iteration + 1
    record: Dict[str, Any] = dict(epoch=step.epoch, iter=it, step=step.epoch * ctx.iters_per_epoch + it,
                                  lr=step.lr)
    s = read_stats(state, ctx, record)
    n_seen = max(s["clips"], 1.0)
    record.update(loss=s["loss_sum"] / n_seen, top1=None if ctx.multi_label else 100 * s["top1_hits"] / n_seen,
                  top5=None if ctx.multi_label else 100 * s["top5_hits"] / n_seen,
                  clips_per_s=clock.rate(it, step.clips.shape[0]))
    if ctx.log is not None:
        ctx.log(record)
    if bar is not None:
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=None if ctx.multi_label else f"{record['top1']:.1f}")


def train_one_epoch(state: TrainState, loader: Any, ctx: LoopContext) -> Optional[str]:
    """Iterations ``state.iteration .. iters_per_epoch - 1`` of epoch ``state.epoch``. Returns None
    when the epoch is done, else why a hook stopped it after a step ("checkpoint" or "signal");
    ``state.iteration`` is then the next iteration. Batches are ``(clips, labels[, indices])``."""
    for h in ctx.hooks:
        h.on_epoch_start(state.epoch)
    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=ctx.iters_per_epoch, initial=state.iteration,
                   desc=f"epoch {state.epoch + 1}/{ctx.train.epochs}", dynamic_ncols=True)
    clock, stop = _LogClock(state.iteration), None
    ctx.model.train()
    for it, batch in enumerate(loader, start=state.iteration):
        if it >= ctx.iters_per_epoch:
            break
        step = _make_step(batch, it, state, ctx)
        for h in ctx.hooks:
            h.before_forward(step)
        _forward_backward(step, state, ctx)
        if step.do_step:
            _unscale_and_norm(step, state, ctx)
        for h in ctx.hooks:
            h.after_backward(step, state.stats)
        _update(step, state, ctx)
        state.iteration = it + 1
        if (it + 1) % ctx.train.log_every == 0 or step.last:
            _log(step, state, ctx, clock, bar)
        if bar is not None:
            bar.update(1)
        for h in ctx.hooks:
            h.after_iteration(step, state.stats)
        if step.stop is not None:
            read_stats(state, ctx, {})  # never checkpoint weights that a non-finite step has touched
            stop = step.stop
            break
    if bar is not None:
        bar.close()
    if stop is None:
        state.iteration = ctx.iters_per_epoch
    return stop
