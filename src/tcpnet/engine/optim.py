"""The published optimizer recipe: parameter groups with lr/decay multipliers, SGD (or AdamW),
per-epoch step/cosine schedule with optional per-iteration linear warm-up.

The schedule is a pure function of (epoch, iteration), so resuming needs no scheduler state.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tcpnet.config import OPTIMIZERS, SCHEDULES
from tcpnet.heads import ParamGroupSpec

__all__ = ["GROUP_NAMES", "POSITION_GROUP", "head_families", "split_by_layer", "build_param_groups", "build_optimizer", "base_lr_at", "set_lr",
           "group_summary", "left_out_parameters"]

# The authors' groups, in their order; a head's own families (Head.param_groups) go before the
# classifier's (e.g. the TCP head's "TCP_weight", "TCP_bias", "TCP_bn scale/shift").
BASE_GROUPS = ("first_conv_weight", "first_conv_bias", "normal_weight", "normal_bias",
               "BN scale/shift", "LN scale/shift")
CLASSIFIER_GROUPS = ("lr5_weight", "lr10_bias")
# the published TCP model's full list (its head declares the "TCP" family)
GROUP_NAMES = (*BASE_GROUPS, "TCP_weight", "TCP_bias", "TCP_bn scale/shift", *CLASSIFIER_GROUPS)
_FAMILY = ("_weight", "_bias", "_bn scale/shift")
# Learned position tables and tokens: trained at the base rate, never weight-decayed (every ViT/Swin recipe).
POSITION_GROUP = "pos_embed"
_POSITION_NAMES = ("pos_embed", "absolute_pos_embed", "relative_position_bias_table", "cls_token", "mask_token")


def _multipliers(lr_x_factor: float, families: Sequence[ParamGroupSpec], bias_lr_mult: float = 2.0) -> Dict[str, tuple]:
    """(lr_mult, decay_mult) of every group; a family's bias has no weight decay, its norms do
    (as the authors' TCP_bn group). ``bias_lr_mult``: the first conv's, the other convs' and
    linears' and fc's bias over its weight (published TCP: 2)."""
    x, b = float(lr_x_factor), _check_bias_lr_mult(bias_lr_mult)
    mult = {
        POSITION_GROUP: (1.0, 0.0),
        "first_conv_weight": (1.0, 1.0), "first_conv_bias": (b, 0.0),
        "normal_weight": (1.0, 1.0), "normal_bias": (b, 0.0),
        "BN scale/shift": (1.0, 0.0), "LN scale/shift": (1.0, 0.0),
        "lr5_weight": (x, 1.0), "lr10_bias": (b * x, 0.0),
    }
    for f in families:
        lr = x if f.lr_mult is None else float(f.lr_mult)
        mult.update({f.name + "_weight": (lr, 1.0), f.name + "_bias": (lr, 0.0), f.name + "_bn scale/shift": (lr, 1.0)})
    return mult


def _check_bias_lr_mult(value: float) -> float:
    """``train.bias_lr_mult`` as a float, or a ValueError naming it (it must be finite and > 0)."""
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"train.bias_lr_mult must be a finite number > 0 (2: published TCP, 1: transformer "
                         f"recipes), got {value!r}")
    return v


def head_families(model: nn.Module, pretrained_dim: Optional[int] = None) -> List[ParamGroupSpec]:
    """The optimizer families the model's head declares (``Head.param_groups``), with module
    names made absolute (``head.<module>``)."""
    head = getattr(getattr(model, "module", model), "head", None)
    declare = getattr(head, "param_groups", None)
    if declare is None:
        return []
    specs = declare(pretrained_dim)
    names = [s.name for s in specs]
    if len(set(names)) != len(names) or set(names) & {"first_conv", "normal", "BN", "LN", "lr5", "lr10"}:
        raise ValueError(f"head {type(head).__name__}: parameter-group families must be unique and not "
                         f"named like the base groups, got {names}")
    return [ParamGroupSpec(s.name, tuple(f"head.{m}" for m in s.modules), s.lr_mult) for s in specs]


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
                       pretrained_dim: Optional[int] = None, layer_decay: Optional[float] = None,
                       bias_lr_mult: float = 2.0) -> List[dict]:
    """Split a Recognizer's parameters, one by one, into the authors' 11 groups.

    Every module's own parameters (``recurse=False``, leaf or not, so an attention module's
    ``in_proj_weight`` or a ``cls_token`` is seen) get a group by the module's kind: the first
    conv -> ``first_conv_*``; other convs and linears -> ``normal_*`` (``TCP_*`` inside the TCP
    attention; ``fc`` -> ``lr5_weight``/``lr10_bias``); every ``_BatchNorm`` (2-D, 3-D, SyncBN) ->
    ``BN scale/shift`` (``TCP_bn`` inside the attention); LayerNorm/GroupNorm -> ``LN``; any other
    parameter -> the weight group if it has 2+ dimensions, else the bias group.

    The head's own families (:meth:`~tcpnet.heads.Head.param_groups`: the TCP head asks for its
    temporal attention, plus ``layer_reduce2``/``layer_reduce_bn2`` when ``pretrained_dim``
    differs from its dim, at ``lr_x_factor``) take their modules' parameters. With ``partial_bn`` the
    published recipe puts the BNs outside the attention in no group: the coverage check knows
    those are left out on purpose, and :func:`left_out_parameters` names them for the log.
    Position tables and class tokens (``pos_embed``, ``relative_position_bias_table``, ...) get no
    weight decay, in a ``pos_embed`` group present only when a model has them. A frozen backbone
    (``Recognizer.freeze_backbone``) is in no group. With ``layer_decay`` every group of the
    backbone is split by the backbone's layers (``VideoBackbone.layer_ids``): layer k of L trains at
    ``layer_decay ** (L - k)`` times its group's rate, the head and classifier at the full rate.
    The ``*_bias`` groups outside the head's families train at ``bias_lr_mult`` times their
    weights' rate (published TCP: 2; 1 for recipes that treat biases like weights).
    Raises ``ValueError`` naming every trainable parameter that is in no group or in two.
    """
    families = head_families(model, pretrained_dim)
    order = [*BASE_GROUPS, *(f.name + suffix for f in families for suffix in _FAMILY), *CLASSIFIER_GROUPS]
    groups: Dict[str, List[nn.Parameter]] = {n: [] for n in order}
    left_out: Set[int] = set()
    frozen = getattr(getattr(model, "module", model), "backbone_frozen", False)
    for name, m, pname, p, is_first_conv in _own_parameters(model):
        kind = next((f.name for f in families if _under(name, f.modules)), "normal")
        group = None if frozen and _under(name, ["backbone"]) else _group_of(
            m, name, pname, p, kind, is_first_conv, partial_bn)
        if group is None:
            left_out.add(id(p))
        else:
            groups.setdefault(group, []).append(p)
    _check_coverage(model, groups, left_out)
    mult = _multipliers(lr_x_factor, families, bias_lr_mult)
    order += [n for n in groups if n not in order]  # the position-table group, when there is one
    out = [{"params": groups[n], "name": n, "lr_mult": mult[n][0], "decay_mult": mult[n][1]} for n in order]
    return out if layer_decay is None else split_by_layer(model, out, layer_decay)


def _own_parameters(model: nn.Module) -> Iterator[Tuple[str, nn.Module, str, nn.Parameter, bool]]:
    """(module name, module, parameter name, parameter, is the first conv) for every parameter,
    at the first module that holds it: a shared (tied) parameter is one parameter."""
    seen: Set[int] = set()
    first_conv_seen = False
    for raw_name, m in model.named_modules():
        own = [(n, p) for n, p in m.named_parameters(recurse=False) if id(p) not in seen]
        is_first_conv = isinstance(m, _CONVS) and not first_conv_seen
        first_conv_seen = first_conv_seen or isinstance(m, _CONVS)
        for pname, p in own:
            seen.add(id(p))
            yield _strip_wrappers(raw_name), m, pname, p, is_first_conv


def _group_of(m: nn.Module, name: str, pname: str, p: nn.Parameter, kind: str, is_first_conv: bool,
              partial_bn: bool) -> Optional[str]:
    """The group of one parameter (None: left out on purpose by partial BN)."""
    is_weight = pname == "weight" or (pname != "bias" and p.dim() >= 2)
    if pname in _POSITION_NAMES:
        return POSITION_GROUP
    if is_first_conv:
        return "first_conv_weight" if is_weight else "first_conv_bias"
    if name == "fc" and isinstance(m, nn.Linear):
        return "lr5_weight" if is_weight else "lr10_bias"
    if isinstance(m, _BatchNorm):  # 1-D/2-D/3-D and SyncBatchNorm alike
        if kind != "normal":
            return f"{kind}_bn scale/shift"
        return None if partial_bn else "BN scale/shift"
    if isinstance(m, _OTHER_NORMS):
        return f"{kind}_bn scale/shift" if kind != "normal" else "LN scale/shift"
    return f"{kind}_weight" if is_weight else f"{kind}_bias"


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
                    **grouping: Any) -> torch.optim.Optimizer:
    """SGD (published: no Nesterov, coupled L2) or AdamW (decoupled decay) over the published
    groups, with each group's lr/decay multipliers already applied. ``grouping``: the keyword
    options of :func:`build_param_groups` (``lr_x_factor``, ``partial_bn``, ``pretrained_dim``,
    ``layer_decay``, ``bias_lr_mult``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"train.optimizer: expected one of {OPTIMIZERS}, got {name!r}")
    groups = build_param_groups(model, **grouping)
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


def align_saved_groups(saved: Dict, optimizer: torch.optim.Optimizer, source: str = "checkpoint") -> Dict:
    """An optimizer state saved with other (empty) groups, matched to ``optimizer``'s groups by
    name: checkpoints written when every model had the TCP groups, empty for other heads, load
    into the groups the head declares now. A non-empty group that no longer exists is an error."""
    names = [g.get("name") for g in optimizer.param_groups]
    groups = saved.get("param_groups", [])
    if len(groups) == len(names) or not all("name" in g for g in groups):
        return saved
    kept = [g for g in groups if g["name"] in names]
    lost = [g["name"] for g in groups if g["name"] not in names and g["params"]]
    if lost or [g["name"] for g in kept] != names:
        raise ValueError(f"{source}: its optimizer groups {[g['name'] for g in groups]} do not match this "
                         f"model's {names}; resume with the model and head it was written for")
    return {**saved, "param_groups": kept}


def split_by_layer(model: nn.Module, groups: List[dict], decay: float) -> List[dict]:
    """Layer-wise lr decay: each group's backbone parameters split by the backbone's layer ids
    (``<group>@layer<k>``, lr_mult x ``decay ** (L - k)``, L = 1 + the deepest id); the head's
    and classifier's parameters keep their group and rate. A backbone that declares no layers
    is an error naming it."""
    bare = getattr(model, "module", model)
    ids = bare.backbone.layer_ids() if hasattr(bare.backbone, "layer_ids") else None
    if not ids:
        raise ValueError(f"train.layer_decay: the backbone {type(bare.backbone).__name__} declares no layers "
                         "(VideoBackbone.layer_ids); use it without layer_decay")
    depth = 1 + max(ids.values())
    layer_of = {id(p): ids[n] for n, p in bare.backbone.named_parameters() if n in ids}
    out = []
    for g in groups:
        rest = [p for p in g["params"] if id(p) not in layer_of]
        for k in sorted({layer_of[id(p)] for p in g["params"] if id(p) in layer_of}):
            params = [p for p in g["params"] if layer_of.get(id(p)) == k]
            out.append({**g, "params": params, "name": f"{g['name']}@layer{k}",
                        "lr_mult": g["lr_mult"] * decay ** (depth - k)})
        if rest or not g["params"]:
            out.append({**g, "params": rest})
    return out
