"""The published optimizer recipe: parameter groups with lr/decay multipliers, SGD (or AdamW),
per-epoch step/cosine schedule with optional per-iteration linear warm-up.

The schedule is a pure function of (epoch, iteration), so resuming needs no scheduler state.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Set

import torch
from torch import nn

from tcpnet.config import OPTIMIZERS, SCHEDULES
from tcpnet.models.batchnorm import batchnorms

__all__ = ["GROUP_NAMES", "build_param_groups", "build_optimizer", "base_lr_at", "set_lr",
           "group_summary", "left_out_parameters"]

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


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_OTHER_NORMS = (nn.LayerNorm, nn.GroupNorm)


def build_param_groups(model: nn.Module, *, lr_x_factor: float = 5.0, partial_bn: bool = False,
                       pretrained_dim: Optional[int] = None) -> List[dict]:
    """Split a Recognizer's parameters, one by one, into the authors' 11 groups.

    Every module's own parameters (``recurse=False``, leaf or not, so an attention module's
    ``in_proj_weight`` or a ``cls_token`` is seen) get a group by the module's kind: the first
    conv -> ``first_conv_*``; other convs and linears -> ``normal_*`` (``TCP_*`` inside the TCP
    attention; ``fc`` -> ``lr5_weight``/``lr10_bias``); every ``_BatchNorm`` (2-D, 3-D, SyncBN) ->
    ``BN scale/shift`` (``TCP_bn`` inside the attention); LayerNorm/GroupNorm -> ``LN``; any other
    parameter -> the weight group if it has 2+ dimensions, else the bias group.

    TCP attention (``head.TCP_att.*``, plus ``head.layer_reduce2``/``layer_reduce_bn2`` when
    ``pretrained_dim`` differs from the head's dim) gets ``lr_x_factor``. With ``partial_bn`` the
    published recipe puts the BNs outside the attention in no group: the coverage check knows
    those are left out on purpose, and :func:`left_out_parameters` names them for the log.
    Raises ``ValueError`` naming every trainable parameter that is in no group or in two.
    """
    head = getattr(getattr(model, "module", model), "head", None)
    dim = _head_dim(head) if head is not None else None
    tcp_prefixes = ["head.TCP_att"]
    if pretrained_dim is not None and dim is not None and pretrained_dim != dim:
        tcp_prefixes += ["head.layer_reduce2", "head.layer_reduce_bn2"]
    bn_modules = {id(m) for m in batchnorms(model)}

    groups: Dict[str, List[nn.Parameter]] = {n: [] for n in GROUP_NAMES}
    left_out: Set[int] = set()
    first_conv_seen = False
    for raw_name, m in model.named_modules():
        own = list(m.named_parameters(recurse=False))
        if not own:
            continue
        name = _strip_wrappers(raw_name)
        kind = "TCP" if _under(name, tcp_prefixes) else "normal"
        is_first_conv = isinstance(m, _CONVS) and not first_conv_seen
        first_conv_seen = first_conv_seen or isinstance(m, _CONVS)
        for pname, p in own:
            is_weight = pname == "weight" or (pname != "bias" and p.dim() >= 2)
            if is_first_conv:
                group = "first_conv_weight" if is_weight else "first_conv_bias"
            elif name == "fc" and isinstance(m, nn.Linear):
                group = "lr5_weight" if is_weight else "lr10_bias"
            elif id(m) in bn_modules:
                if kind == "TCP":
                    group = "TCP_bn scale/shift"
                elif partial_bn:
                    left_out.add(id(p))
                    continue
                else:
                    group = "BN scale/shift"
            elif isinstance(m, _OTHER_NORMS):
                group = "TCP_bn scale/shift" if kind == "TCP" else "LN scale/shift"
            else:
                group = f"{kind}_weight" if is_weight else f"{kind}_bias"
            groups[group].append(p)
    _check_coverage(model, groups, left_out)
    mult = _multipliers(lr_x_factor)
    return [{"params": groups[n], "name": n, "lr_mult": mult[n][0], "decay_mult": mult[n][1]}
            for n in GROUP_NAMES]


def _check_coverage(model: nn.Module, groups: Dict[str, List[nn.Parameter]], left_out: Set[int]) -> None:
    """Every trainable parameter is in exactly one group (or left out on purpose), else a
    ValueError that names the offenders: a parameter silently missing from the optimizer would
    never train."""
    where: Dict[int, List[str]] = {}
    for g, params in groups.items():
        for p in params:
            where.setdefault(id(p), []).append(g)
    all_names: Dict[int, List[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        all_names.setdefault(id(p), []).append(n)
    twice = {" = ".join(all_names[i]): g for i, g in where.items() if len(g) > 1}
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and id(p) not in where and id(p) not in left_out]
    problems = []
    if missing:
        problems.append(f"in no group: {missing}")
    if twice:
        problems.append(f"in more than one group: {twice}")
    if problems:
        raise ValueError("optimizer parameter groups: trainable parameters " + "; ".join(problems))


def left_out_parameters(model: nn.Module, partial_bn: bool) -> List[str]:
    """Names of the trainable parameters that the published partial-BN recipe keeps out of every
    group (logged at the start of training so the choice is visible)."""
    if not partial_bn:
        return []
    in_groups = {id(p) for g in build_param_groups(model, partial_bn=True) for p in g["params"]}
    return [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_groups]


def build_optimizer(model: nn.Module, *, lr: float, name: str = "sgd", momentum: float = 0.9,
                    weight_decay: float = 1e-4, betas: Sequence[float] = (0.9, 0.999),
                    lr_x_factor: float = 5.0, partial_bn: bool = False,
                    pretrained_dim: Optional[int] = None) -> torch.optim.Optimizer:
    """SGD (published: no Nesterov, coupled L2) or AdamW (decoupled decay) over the published
    groups, with each group's lr/decay multipliers already applied."""
    if name not in OPTIMIZERS:
        raise ValueError(f"train.optimizer: expected one of {OPTIMIZERS}, got {name!r}")
    groups = build_param_groups(model, lr_x_factor=lr_x_factor, partial_bn=partial_bn,
                                pretrained_dim=pretrained_dim)
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum,
                                                     weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
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
        raise ValueError(f"lr_schedule: expected one of {SCHEDULES}, got {schedule!r}")
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
