"""The published optimizer recipe (SPEC §4.1-4.2): parameter groups with lr/decay multipliers,
SGD, per-epoch step/cosine schedule with optional per-iteration linear warm-up.

The schedule is a pure function of (epoch, iteration), so resuming needs no scheduler state.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GROUP_NAMES", "build_param_groups", "build_optimizer", "base_lr_at", "set_lr",
           "group_summary"]

# (name, lr_mult, decay_mult) in the authors' order; "x" stands for lr_x_factor.
GROUP_NAMES = ("first_conv_weight", "first_conv_bias", "normal_weight", "normal_bias",
               "BN scale/shift", "LN scale/shift", "TCP_weight", "TCP_bias", "TCP_bn scale/shift",
               "lr5_weight", "lr10_bias")


def _multipliers(lr_x_factor: float) -> Dict[str, tuple]:
    x = float(lr_x_factor)
    return {
        "first_conv_weight": (1.0, 1.0), "first_conv_bias": (2.0, 0.0),
        "normal_weight": (1.0, 1.0), "normal_bias": (2.0, 0.0),
        "BN scale/shift": (1.0, 0.0), "LN scale/shift": (1.0, 0.0),
        "TCP_weight": (x, 1.0), "TCP_bias": (x, 0.0), "TCP_bn scale/shift": (x, 1.0),
        "lr5_weight": (x, 1.0), "lr10_bias": (2.0 * x, 0.0),
    }


def _head_dim(head: nn.Module) -> Optional[int]:
    dim = getattr(head, "dim", None)
    if dim is None and hasattr(head, "layer_reduce2"):
        dim = head.layer_reduce2.out_channels
    return dim


def _strip_wrappers(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def _add_weight_and_bias(groups: Dict[str, List[nn.Parameter]], m: nn.Module, weight_group: str,
                         bias_group: str) -> None:
    groups[weight_group].append(m.weight)
    if m.bias is not None:
        groups[bias_group].append(m.bias)


def build_param_groups(model: nn.Module, *, lr_x_factor: float = 5.0, partial_bn: bool = False,
                       pretrained_dim: Optional[int] = None) -> List[dict]:
    """Split a Recognizer's parameters into the authors' 11 groups (SPEC §4.1).

    TCP attention (``head.TCP_att.*``; plus ``head.layer_reduce2``/``layer_reduce_bn2`` when
    ``pretrained_dim`` differs from the head's dim) gets ``lr_x_factor``; ``fc`` gets
    ``lr_x_factor`` (weight) and ``2*lr_x_factor`` (bias); with ``partial_bn`` the BNs outside the
    TCP attention are in no group. Every group carries ``name``, ``lr_mult`` and ``decay_mult``.
    """
    head = getattr(getattr(model, "module", model), "head", None)
    dim = _head_dim(head) if head is not None else None
    reduce2_in_tcp = pretrained_dim is not None and dim is not None and pretrained_dim != dim
    tcp_prefixes = ["head.TCP_att"]
    if reduce2_in_tcp:
        tcp_prefixes += ["head.layer_reduce2", "head.layer_reduce_bn2"]

    groups: Dict[str, List[nn.Parameter]] = {n: [] for n in GROUP_NAMES}
    first_conv_seen = False
    for raw_name, m in model.named_modules():
        name = _strip_wrappers(raw_name)
        in_tcp = any(name == p or name.startswith(p + ".") for p in tcp_prefixes)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if not first_conv_seen:
                first_conv_seen = True
                kind = "first_conv"
            else:
                kind = "TCP" if in_tcp else "normal"
            _add_weight_and_bias(groups, m, f"{kind}_weight", f"{kind}_bias")
        elif isinstance(m, nn.Linear):
            if name == "fc":
                _add_weight_and_bias(groups, m, "lr5_weight", "lr10_bias")
            else:
                kind = "TCP" if in_tcp else "normal"
                _add_weight_and_bias(groups, m, f"{kind}_weight", f"{kind}_bias")
        elif isinstance(m, _BatchNorm):
            params = [p for p in (m.weight, m.bias) if p is not None]
            if in_tcp:
                groups["TCP_bn scale/shift"].extend(params)
            elif not partial_bn:
                groups["BN scale/shift"].extend(params)
        elif isinstance(m, nn.LayerNorm):
            params = [p for p in (m.weight, m.bias) if p is not None]
            groups["TCP_bn scale/shift" if in_tcp else "LN scale/shift"].extend(params)
        elif len(list(m.children())) == 0 and len(list(m.parameters(recurse=False))) > 0:
            raise ValueError(f"param groups: module '{name}' ({type(m).__name__}) has parameters "
                             "but no group rule (conv, linear, batch/layer norm)")
    mult = _multipliers(lr_x_factor)
    return [{"params": groups[n], "name": n, "lr_mult": mult[n][0], "decay_mult": mult[n][1]}
            for n in GROUP_NAMES]


def build_optimizer(model: nn.Module, *, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
                    lr_x_factor: float = 5.0, partial_bn: bool = False,
                    pretrained_dim: Optional[int] = None) -> torch.optim.SGD:
    """SGD (no Nesterov, coupled L2) over the published groups, lr/decay already multiplied."""
    groups = build_param_groups(model, lr_x_factor=lr_x_factor, partial_bn=partial_bn,
                                pretrained_dim=pretrained_dim)
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for g in opt.param_groups:
        g["base_weight_decay"] = weight_decay
    set_lr(opt, lr)
    return opt


def base_lr_at(epoch: int, *, lr: float, schedule: str = "step", lr_steps: Sequence[int] = (),
               epochs: int = 1, warmup_epochs: float = 0.0, iteration: int = 0,
               iters_per_epoch: int = 1) -> float:
    """Base learning rate at ``epoch`` (0-based) and ``iteration`` within it.

    step: lr * 0.1^#(steps <= epoch); cos: lr * (1 + cos(pi * epoch / epochs)) / 2 (per epoch,
    as published); warm-up (ours, off by default): a linear factor (i+1)/(warmup iterations)
    over the first ``warmup_epochs`` epochs, counted in iterations.
    """
    if schedule == "step":
        base = lr * 0.1 ** sum(1 for s in lr_steps if epoch >= s)
    elif schedule == "cos":
        base = 0.5 * lr * (1.0 + math.cos(math.pi * epoch / epochs))
    else:
        raise ValueError(f"lr_schedule: expected 'step' or 'cos', got {schedule!r}")
    warmup_iters = int(round(warmup_epochs * iters_per_epoch))
    global_iter = epoch * iters_per_epoch + iteration
    if warmup_iters > 0 and global_iter < warmup_iters:
        base *= (global_iter + 1) / warmup_iters
    return base


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    """lr_g = base_lr * lr_mult, weight_decay_g = wd * decay_mult, for every group."""
    for g in optimizer.param_groups:
        g["lr"] = base_lr * g.get("lr_mult", 1.0)
        g["weight_decay"] = g.get("base_weight_decay", g.get("weight_decay", 0.0)) * g.get("decay_mult", 1.0)


def group_summary(optimizer: torch.optim.Optimizer) -> List[dict]:
    """One row per group: name, number of tensors, lr_mult, decay_mult, current lr."""
    return [{"name": g.get("name", str(i)), "num_tensors": len(g["params"]),
             "lr_mult": g.get("lr_mult", 1.0), "decay_mult": g.get("decay_mult", 1.0), "lr": g["lr"]}
            for i, g in enumerate(optimizer.param_groups)]
