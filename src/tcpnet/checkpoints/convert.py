"""Key mapping from every weight layout we accept to our names (``backbone.*``, ``head.*``, ``fc.*``).

Layouts:

* ``authors``: the released TCPNet/TSN checkpoints, ``[module.]base_model.<backbone key>``,
  ``[module.]base_model.TCP.<head key>``, ``[module.]new_fc.*`` (legacy
  ``base_model.classifier.*`` and the dropout-0 ``base_model.fc.*`` are the classifier too),
  optionally with the old ``iSQRT`` head names of earlier releases.
* ``tcpnet``: our own names.
* ``imagenet``: ImageNet backbones: torchvision state dicts (``conv1.weight`` ... ``fc.*``) and the
  authors' GCP-pretrained files (``module.<backbone key>`` plus the reduction layers either at
  top level, ResNet-50 layout, or as ``iSQRT.layer_reduce{1,2}.{0,1}.*``, TEA/R152 layout).
* ``torchvision-video``: torchvision's video ResNets (``stem.*``, ``layer1.0.conv1.0.0.*`` ...,
  ``fc.*``), e.g. the Kinetics-400 ``r2plus1d_18`` weights; converted like ImageNet backbones.

All functions here are pure: they look at key names (and the model's key set), never at values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import torch

from .io import CheckpointError

# ---------------------------------------------------------------- authors' names <-> ours

_AUTHORS_HEAD = "base_model.TCP."
_AUTHORS_BACKBONE = "base_model."
_AUTHORS_FC = "new_fc."
# Classifier names of older/other authors' runs (a legacy TSN name and the dropout-0 variant).
_AUTHORS_FC_ALIASES = ("base_model.classifier.", "base_model.fc.")


def ours_to_authors(key: str) -> str:
    """``backbone.X`` -> ``base_model.X``, ``head.Y`` -> ``base_model.TCP.Y``, ``fc.Z`` -> ``new_fc.Z``."""
    for ours, theirs in (("head.", _AUTHORS_HEAD), ("backbone.", _AUTHORS_BACKBONE), ("fc.", _AUTHORS_FC)):
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


def authors_to_ours(key: str) -> Optional[str]:
    """Inverse of :func:`ours_to_authors` (``None`` for keys outside the authors' TSN)."""
    for theirs, ours in ((_AUTHORS_HEAD, "head."), (_AUTHORS_BACKBONE, "backbone."), (_AUTHORS_FC, "fc.")):
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return None


def strip_module(key: str) -> str:
    """Drop the ``module.`` prefix that ``nn.DataParallel``/DDP put on every key."""
    return key[len("module."):] if key.startswith("module.") else key


# ---------------------------------------------------------------- old "iSQRT" head names

# Renames of the attention module, tried in this order (most specific first).
_ATT_RENAMES: Tuple[Tuple[str, str], ...] = (
    ("att_module.conv_1", "TCP_att.TCA.g1"),
    ("att_module.conv_2", "TCP_att.TCA.g2"),
    ("att_module.sp_att.conv_theta", "TCP_att.TSA.conv_phi_1"),
    ("att_module.sp_att.conv_phi", "TCP_att.TSA.conv_phi_2"),
    ("att_module.sp_att.conv_g", "TCP_att.TSA.conv_phi0"),
    ("att_module.sp_att", "TCP_att.TSA"),
    ("att_module", "TCP_att"),
)
# TEA / pre-act R152 heads stored each reduction as a (conv, BN) sequence (candidates 8-11).
_SEQ_RENAMES: Tuple[Tuple[str, str], ...] = (
    ("1.1.", "_bn1."),
    ("2.1.", "_bn2."),
    (".1.", "."),
    (".0.", "."),
)


def old_key_candidates(key: str) -> List[str]:
    """Candidate new names of an old ``iSQRT`` key, most specific first.

    ResNet-50-style files kept the head inside ``layer4`` (``layer4.iSQRT.`` -> ``TCP.``);
    TEA/R152-style files have ``iSQRT.`` -> ``TCP.`` and sequence indices. Because the caller
    takes the first candidate that the model actually has, one ordered list serves both
    styles and gives the authors' result wherever their per-arch rule succeeds.
    """
    if "layer4.iSQRT." in key:
        base = key.replace("layer4.iSQRT.", "TCP.")
    else:
        base = key.replace("iSQRT.", "TCP.")
    cands = [base.replace(old, new) for old, new in _ATT_RENAMES]
    cands.append(base)
    cands += [base.replace(old, new) for old, new in _SEQ_RENAMES]
    out: List[str] = []
    for c in cands:  # keep order, drop repeats
        if c not in out:
            out.append(c)
    return out


def map_old_keys(keys: Iterable[str], target_keys: Set[str]) -> Tuple[Dict[str, str], List[str]]:
    """Rename old ``iSQRT`` keys against ``target_keys`` (authors' names, no ``module.``).

    Returns ``(old -> new for every key that has a match, keys with no match)``. Keys without
    ``iSQRT`` map to themselves. A pure function of its arguments: calling it again (for the
    next file of an ensemble) cannot replay earlier renames.
    """
    mapping: Dict[str, str] = {}
    unmatched: List[str] = []
    for key in keys:
        if "iSQRT" not in key:
            mapping[key] = key
            continue
        new = next((c for c in old_key_candidates(key) if c in target_keys), None)
        if new is None:
            unmatched.append(key)
        else:
            mapping[key] = new
    return mapping, unmatched


# ---------------------------------------------------------------- extracting the state dict

def extract_state_dict(obj: Any, source: str = "<state dict>") -> Dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded file: our model/training files, the authors'
    ``{'state_dict': ...}`` checkpoints, DeepSpeed's ``{'module': ...}`` (VideoMAE's releases),
    pytorchvideo's ``{'model_state': ...}`` or a plain state dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors or a checkpoint dict, "
                              f"got {type(obj).__name__}")
    sd: Any = obj
    if isinstance(obj.get("state_dict"), Mapping):
        sd = obj["state_dict"]
    elif isinstance(obj.get("model"), Mapping):
        sd = obj["model"]
        if isinstance(sd.get("state_dict"), Mapping):
            sd = sd["state_dict"]
    elif isinstance(obj.get("module"), Mapping):
        sd = obj["module"]
    elif isinstance(obj.get("model_state"), Mapping):
        sd = obj["model_state"]
    bad = [(k, type(v).__name__) for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        shown = ", ".join(f"{k!r} ({t})" for k, t in bad[:5])
        raise CheckpointError(
            f"{source}: expected a state dict of tensors, but {len(bad)} entries are not tensors: "
            f"{shown}{' ...' if len(bad) > 5 else ''} (top-level keys: {sorted(map(str, obj))[:10]})")
    return {str(k): v for k, v in sd.items()}


# ---------------------------------------------------------------- conversion to our names

@dataclass
class Conversion:
    """A state dict renamed to our keys, plus what could not be placed."""

    state: Dict[str, torch.Tensor]
    origin: Dict[str, str]  # our key -> key in the file
    unmapped: List[str] = field(default_factory=list)  # file keys with no place in the model
    converted_from: str = "tcpnet"
    pretraining_classifier: bool = False  # True when state["fc.*"] is an ImageNet classifier

    def add(self, ours: str, file_key: str, value: torch.Tensor) -> None:
        """Place the file's ``file_key`` at our key ``ours``; two file keys for one model key are
        a CheckpointError naming both (a key map must never overwrite silently)."""
        if ours in self.state:
            raise CheckpointError(f"file keys {self.origin[ours]!r} and {file_key!r} both map to model key {ours!r}")
        self.state[ours], self.origin[ours] = value, file_key


def detect_layout(keys: Sequence[str]) -> str:
    """``authors``, ``tcpnet`` or ``imagenet`` from the key names (``module.`` ignored)."""
    stripped = [strip_module(k) for k in keys]
    if any(k.startswith(_AUTHORS_BACKBONE) or k.startswith(_AUTHORS_FC) for k in stripped):
        return "authors"
    if any(k.startswith("backbone.") or k.startswith("head.") for k in stripped):
        return "tcpnet"
    return "imagenet"


_GCP_SEQ = re.compile(r"^iSQRT\.layer_reduce(\d+)\.([01])\.(.+)$")


def _tsm_fallback(key: str, model_keys: Set[str]) -> str:
    # TSM wraps shifted convs as `conv1.net.weight`; our shift is parameter-free (same tensor).
    if key not in model_keys and ".net." in key and key.replace(".net.", ".") in model_keys:
        return key.replace(".net.", ".")
    return key


def _convert_authors(sd: Mapping[str, torch.Tensor], model_keys: Set[str]) -> Conversion:
    names = {k: strip_module(k) for k in sd}
    has_new_fc = any(n.startswith(_AUTHORS_FC) for n in names.values())
    for k, n in names.items():
        for alias in _AUTHORS_FC_ALIASES:
            if n.startswith(alias) and not has_new_fc:
                names[k] = _AUTHORS_FC + n[len(alias):]
    old = any("iSQRT" in n for n in names.values())
    conv = Conversion({}, {}, converted_from="authors-tcp (old iSQRT keys)" if old else "authors-tcp")
    if old:
        target = {ours_to_authors(k) for k in model_keys}
        renamed, unmatched = map_old_keys(names.values(), target)
    else:
        renamed, unmatched = {n: n for n in names.values()}, []
    unmatched_set = set(unmatched)
    for k, n in names.items():
        if n in unmatched_set:
            conv.unmapped.append(k)
            continue
        ours = authors_to_ours(renamed[n])
        if ours is None:
            conv.unmapped.append(k)
            continue
        conv.add(_tsm_fallback(ours, model_keys), k, sd[k])
    return conv


def _convert_tcpnet(sd: Mapping[str, torch.Tensor], model_keys: Set[str]) -> Conversion:
    conv = Conversion({}, {}, converted_from="tcpnet")
    for k, v in sd.items():
        n = strip_module(k)
        if n.split(".", 1)[0] in ("backbone", "head", "fc"):
            conv.add(n, k, v)
        else:
            conv.unmapped.append(k)
    return conv


def _convert_imagenet(sd: Mapping[str, torch.Tensor], model_keys: Set[str]) -> Conversion:
    names = {k: strip_module(k) for k in sd}
    if any(n.startswith("iSQRT.") for n in names.values()):
        label = "imagenet-gcp (TEA/R152 layout)"
    elif any(n.startswith("layer_reduce") for n in names.values()):
        label = "imagenet-gcp (ResNet-50 layout)"
    elif any(k.startswith("module.") for k in sd):
        label = "imagenet (DataParallel)"
    elif any(n.startswith("stem.") for n in names.values()):
        label = "torchvision-video"
    else:
        label = "torchvision-imagenet"
    conv = Conversion({}, {}, converted_from=label)
    for k, n in names.items():
        m = _GCP_SEQ.match(n)
        if m:  # iSQRT.layer_reduce1.0.weight -> head.layer_reduce1.weight; .1. -> layer_reduce_bn1
            idx, part, rest = m.groups()
            new = f"head.layer_reduce{'_bn' if part == '1' else ''}{idx}.{rest}"
        elif n.startswith("fc."):
            new = n  # the pretraining classifier; the loaders decide (usually: drop)
            conv.pretraining_classifier = True
        elif "backbone." + n in model_keys:
            new = "backbone." + n
        elif "head." + n in model_keys:
            new = "head." + n
        else:
            new = _tsm_fallback("backbone." + n, model_keys)
            if new not in model_keys:
                conv.unmapped.append(k)
                continue
        conv.add(new, k, sd[k])
    return conv


def convert_state_dict(sd: Mapping[str, torch.Tensor], model_keys: Iterable[str]) -> Conversion:
    """Rename ``sd`` (any accepted layout) to our keys; ``model_keys`` settles ambiguous names."""
    keys = set(model_keys)
    layout = detect_layout(list(sd))
    if layout == "authors":
        return _convert_authors(sd, keys)
    if layout == "tcpnet":
        return _convert_tcpnet(sd, keys)
    return _convert_imagenet(sd, keys)
