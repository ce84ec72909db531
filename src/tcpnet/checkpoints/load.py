"""Loading weights into a model with a full account of what was loaded, converted and left out.

``load_checkpoint`` is for complete models (the authors' released files, ours, plain state
dicts): strict by default. ``load_pretrained`` starts training from a partial file (ImageNet GCP
or torchvision backbones, another dataset's TCP model): it loads what fits and reports the rest.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from tcpnet.input_config import InputConfig
from tcpnet.models import build_model, unwrap_model

from .convert import Conversion, convert_state_dict, extract_state_dict, strip_module
from .io import CheckpointError, PathLike, check_not_same_file, export_safetensors, read_file, save_model
from .swin3d import convert_swin3d, is_swin3d
from .videomae import convert_videomae, is_videomae
from .x3d import convert_x3d, is_x3d

log = logging.getLogger(__name__)

Source = Union[PathLike, Mapping[str, Any]]
Shape = Tuple[int, ...]

_LIST_CAP = 12
# Missing BN step counters never change a forward pass (momentum is set); old torchvision files
# predate them. They are still listed in the report, but do not fail a strict load.
_BENIGN_MISSING_SUFFIX = "num_batches_tracked"


def _names(items: Sequence[str], cap: int = _LIST_CAP) -> str:
    shown = ", ".join(items[:cap])
    return shown + (f", ... (+{len(items) - cap} more)" if len(items) > cap else "")


@dataclass
class LoadReport:
    """What a load did: model keys loaded/missing, file keys unexpected/dropped, shape clashes."""

    source: str
    converted_from: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)  # model keys left at their current values
    unexpected: List[str] = field(default_factory=list)  # file keys with no place in the model
    shape_mismatch: List[Tuple[str, Shape, Shape]] = field(default_factory=list)  # (key, file, model)
    dropped: List[Tuple[str, str]] = field(default_factory=list)  # (file key, why), by a rule

    @property
    def unused(self) -> List[str]:
        """Every file entry that did not reach the model (unexpected, mismatched or dropped)."""
        return (list(self.unexpected) + [k for k, _, _ in self.shape_mismatch]
                + [k for k, _ in self.dropped])

    @property
    def fatal_missing(self) -> List[str]:
        return [k for k in self.missing if not k.endswith(_BENIGN_MISSING_SUFFIX)]

    @property
    def ok(self) -> bool:
        """True when the file and the model matched exactly (what ``strict=True`` demands)."""
        return not (self.fatal_missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        total = len(self.loaded) + len(self.missing)
        lines = [f"{self.source} ({self.converted_from}): loaded {len(self.loaded)}/{total} "
                 f"model tensors; {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.shape_mismatch)} shape mismatches, {len(self.dropped)} dropped"]
        if self.missing:
            lines.append(f"  missing (left at initialisation): {_names(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (not in the model): {_names(self.unexpected)}")
        if self.shape_mismatch:
            shown = [f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.shape_mismatch]
            lines.append(f"  shape mismatch: {_names(shown)}")
        if self.dropped:
            by_reason: Dict[str, List[str]] = {}
            for k, why in self.dropped:
                by_reason.setdefault(why, []).append(k)
            for why, keys in by_reason.items():
                lines.append(f"  dropped ({why}): {_names(keys)}")
        return "\n".join(lines)


def _source_name(src: Source) -> str:
    return "<state dict>" if isinstance(src, Mapping) else os.fspath(src)


def _read(src: Source) -> Tuple[Any, str]:
    name = _source_name(src)
    return (src if isinstance(src, Mapping) else read_file(src)), name


def _plan(model: nn.Module, conv: Conversion, source: str) -> Tuple[LoadReport, Dict[str, torch.Tensor]]:
    """Sort converted entries into loadable / unexpected / shape-mismatched (nothing is loaded)."""
    model_state = model.state_dict()
    report = LoadReport(source=source, converted_from=conv.converted_from)
    to_load: Dict[str, torch.Tensor] = {}
    for key, value in conv.state.items():
        if key not in model_state:
            report.unexpected.append(conv.origin[key])
        elif tuple(value.shape) != tuple(model_state[key].shape):
            report.shape_mismatch.append((key, tuple(value.shape), tuple(model_state[key].shape)))
        else:
            to_load[key] = value
    report.unexpected.extend(conv.unmapped)
    report.missing = [k for k in model_state if k not in to_load]
    return report, to_load


def _drop(conv: Conversion, keys: Sequence[str], why: str, dropped: List[Tuple[str, str]]) -> None:
    for key in keys:
        dropped.append((conv.origin[key], why))
        del conv.state[key]


def _apply(model: nn.Module, to_load: Dict[str, torch.Tensor], report: LoadReport) -> None:
    result = model.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:  # _plan only passes model keys; anything else is a bug here
        raise CheckpointError(f"{report.source}: internal error, unexpected {result.unexpected_keys}")
    report.loaded = [k for k in model.state_dict() if k in to_load]


def _model_name(model: nn.Module) -> str:
    return str(getattr(model, "model_name", type(model).__name__))


def _mismatch_advice(report: LoadReport, source: str) -> str:
    """What to do about a file that does not fit the model, in the commands' terms."""
    fc = [(k, a, b) for k, a, b in report.shape_mismatch if k.startswith("fc.")]
    only_fc = all(k.startswith("fc.") for k in report.fatal_missing) and not report.unexpected
    if fc and len(fc) == len(report.shape_mismatch) and only_fc:
        file_k, model_k = fc[0][1][0], fc[0][2][0]
        return (f"The file's classifier has {file_k} classes and the model {model_k}. To use the file as it "
                f"is, keep {file_k} classes (tcpnet convert --num-classes {file_k}; data with {file_k} classes). "
                f"To train a {model_k}-class model from it, set model.pretrained={source} in the training "
                "config: every weight but the classifier is loaded and the classifier starts afresh.")
    return ("Check that the model name, T (--segments / model.num_segments) and the model options "
            f"(--set / model.kwargs) are the ones it was trained with; to start training from the weights "
            f"that fit, set model.pretrained={source} in the training config.")


def _convert(sd: Mapping[str, torch.Tensor],
             model_state: Mapping[str, torch.Tensor]) -> Tuple[Conversion, List[Tuple[str, str]]]:
    """``sd`` renamed to our keys (``model_state``: the model's state dict), and the file keys a
    layout rule drops (``(key, why)``): official VideoMAE, pytorchvideo X3D and Video Swin files
    have their own maps (a 2-D ImageNet Swin is inflated to the model's shapes), every other layout
    is convert.py's."""
    if is_videomae(sd):
        return convert_videomae(sd, model_state.keys())
    if is_x3d(sd):
        return convert_x3d(sd, model_state.keys())
    if is_swin3d(sd):
        return convert_swin3d(sd, model_state)
    return convert_state_dict(sd, model_state.keys()), []


def _load(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str, strict: bool) -> LoadReport:
    model = unwrap_model(model)
    model_state = model.state_dict()
    conv, dropped = _convert(sd, model_state)
    if conv.pretraining_classifier:  # an ImageNet fc only fits a model with the same classes
        fc = [k for k in conv.state if k.startswith("fc.")]
        if any(k not in model_state or conv.state[k].shape != model_state[k].shape for k in fc):
            _drop(conv, fc, "ImageNet classifier, shape differs from the model's fc", dropped)
    report, to_load = _plan(model, conv, source)
    report.dropped = dropped
    if strict and not report.ok:
        raise CheckpointError(f"{source} does not fit {_model_name(model)}:\n{report}\n"
                              f"{_mismatch_advice(report, source)}")
    _apply(model, to_load, report)
    if report.ok and not report.dropped:
        log.info("loaded %d tensors from %s (%s)", len(report.loaded), source, report.converted_from)
    else:
        log.warning("%s", report)
    return report


def load_checkpoint(model: nn.Module, path_or_state_dict: Source, strict: bool = True) -> LoadReport:
    """Load a complete model's weights in any accepted layout (authors', ours, torchvision,
    VideoMAE's official fine-tuned files into the matching ``videomae_vit_*`` model,
    pytorchvideo's X3D files into ``x3d_s``/``x3d_m``, mmaction2's and the original repository's
    Video Swin files into ``swin3d_*``).

    ``strict=True`` raises :class:`CheckpointError` naming every missing / unexpected /
    shape-mismatched key before anything is copied; ``strict=False`` loads what matches.
    """
    obj, source = _read(path_or_state_dict)
    return _load(model, extract_state_dict(obj, source), source, strict)


def load_pretrained(model: nn.Module, path: Source) -> LoadReport:
    """Initialise ``model`` from pretraining weights: load what fits, report the rest.

    Accepts ImageNet GCP files (ResNet-50 and TEA/R152 layouts), torchvision state dicts, the
    authors' TCP checkpoints, torchvision video ResNets, VideoMAE's official fine-tuned and
    pre-training files (:mod:`.videomae`), pytorchvideo's X3D files (:mod:`.x3d`), Video Swin files
    and the 2-D ImageNet Swin, inflated to 3-D (:mod:`.swin3d`), and our files. The classifier is always dropped (new task, fresh ``fc``, as the
    authors' fine-tuning does). If the head's second
    reduction does not fit (TCP_dim != pretrained dim), ``layer_reduce2``/``layer_reduce_bn2``
    keep their initialisation.
    """
    obj, source = _read(path)
    sd = extract_state_dict(obj, source)
    model = unwrap_model(model)
    model_state = model.state_dict()
    conv, dropped = _convert(sd, model_state)
    fc = [k for k in conv.state if k.startswith("fc.")]
    _drop(conv, fc, "classifier of the pretraining task; the new task trains a fresh fc", dropped)
    reduce2 = [k for k in conv.state
               if k.startswith("head.layer_reduce2.") or k.startswith("head.layer_reduce_bn2.")]
    if any(k not in model_state or conv.state[k].shape != model_state[k].shape for k in reduce2):
        w = "head.layer_reduce2.weight"
        file_dim = int(conv.state[w].shape[0]) if w in conv.state else None
        model_dim = int(model_state[w].shape[0]) if w in model_state else None
        _drop(conv, reduce2, f"TCP_dim {model_dim} != pretrained dim {file_dim}: second reduction "
              "keeps its initialisation", dropped)
    report, to_load = _plan(model, conv, source)
    report.dropped = dropped
    _apply(model, to_load, report)
    log.info("pretrained weights: %s", report)
    return report


def _model_info(obj: Any, source: str) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        if "model_name" in obj:
            return obj
        if isinstance(obj.get("model"), Mapping) and "model_name" in obj["model"]:
            return obj["model"]
    raise CheckpointError(
        f"{source}: not a tcpnet model file (no 'model_name'), so the model cannot be rebuilt "
        "from it; build the model with tcpnet.build_model(...) and call load_checkpoint, or "
        "convert an authors' file with tcpnet.checkpoints.convert_checkpoint")


def _rebuild(obj: Any, source: str, strict: bool = True) -> Tuple[nn.Module, LoadReport]:
    """The model a tcpnet model/training file records, with its weights, trained input config,
    ``class_names`` and ``multi_label`` attached, in eval mode; and the load's report."""
    info = _model_info(obj, source)
    kwargs = dict(info.get("model_kwargs") or {})
    kwargs.pop("pretrained", None)  # the file holds the trained weights
    kwargs.setdefault("num_classes", info.get("num_classes"))
    saved_cfg = info.get("input_config")
    if saved_cfg and "num_segments" in saved_cfg:
        kwargs.setdefault("num_segments", saved_cfg["num_segments"])
    try:
        model = build_model(info["model_name"], **kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: cannot rebuild model {info['model_name']!r} with "
                              f"{kwargs}: {e}") from e
    report = _load(model, extract_state_dict(obj, source), source, strict)
    if saved_cfg and hasattr(model, "input_config"):
        if InputConfig.from_dict(saved_cfg) != model.input_config:
            log.debug("%s: saved input_config %s differs from the rebuilt model's %s; using the saved one",
                      source, saved_cfg, model.input_config.to_dict())
            model.input_config = InputConfig.from_dict(saved_cfg)
    model.class_names = info.get("class_names")
    model.multi_label = bool(info.get("multi_label", obj.get("multi_label", False)))  # trained with BCE
    return model.eval(), report


def build_model_from_checkpoint(path: PathLike, strict: bool = True) -> nn.Module:
    """Rebuild the model recorded in a tcpnet model/training file (or .safetensors) and load it.

    The model is returned in eval mode with ``class_names`` (list or ``None``) and
    ``multi_label`` (whether it was trained on multi-label data) attached.
    """
    obj, source = _read(path)
    return _rebuild(obj, source, strict)[0]


def _is_model_file(obj: Any) -> bool:
    return isinstance(obj, Mapping) and ("model_name" in obj or (isinstance(obj.get("model"), Mapping)
                                                                 and "model_name" in obj["model"]))


_CLASSIFIER_KEYS = ("new_fc.weight", "base_model.classifier.weight", "base_model.fc.weight", "fc.weight",
                    "blocks.5.proj.weight",  # pytorchvideo X3D
                    "cls_head.fc_cls.weight")  # mmaction2


def _infer_num_classes(sd: Mapping[str, torch.Tensor], source: str) -> int:
    for key, value in sd.items():
        name = strip_module(key)
        if name in _CLASSIFIER_KEYS and value.dim() == 2:
            return int(value.shape[0])
    raise CheckpointError(f"{source}: no classifier weight ({', '.join(_CLASSIFIER_KEYS)}) "
                          "to infer num_classes from; pass num_classes")


def _check_same_model(model: nn.Module, source: str, model_name: Optional[str], num_classes: Optional[int],
                      num_segments: Optional[int], overrides: Mapping[str, Any]) -> None:
    """A tcpnet file is converted as the model it records: refuse options that would change it."""
    asked = {"--model": (model_name, model.model_name), "--num-classes": (num_classes, int(model.num_classes)),
             "--segments": (num_segments, int(model.num_segments))}
    asked.update({f"--set {k}": (v, model.model_kwargs.get(k)) for k, v in overrides.items()})
    for option, (wanted, recorded) in asked.items():
        if wanted is not None and wanted != recorded:
            raise CheckpointError(f"{option} {wanted}: {source} is a tcpnet model file of {model.model_name} "
                                  f"with {option.split()[-1].lstrip('-')} = {recorded}; convert keeps the model "
                                  "it records (leave the option out)")


def convert_checkpoint(src: PathLike, dst: PathLike, model_name: Optional[str] = None,
                       num_classes: Optional[int] = None, num_segments: Optional[int] = None,
                       class_names: Optional[Sequence[str]] = None, **overrides: Any) -> LoadReport:
    """Convert a checkpoint into our model file: ``dst`` ending in ``.safetensors`` gives a
    safetensors export, anything else our torch format; ``dst`` must not be ``src``.

    A tcpnet model or training file keeps everything it records (model, T, trained input config,
    class names, multi_label), so every format of it predicts the same; the options may only
    restate it, and ``class_names`` replaces the names. Any other file (e.g. the authors'
    release) needs ``model_name``; ``num_segments`` defaults to the model's own T and
    ``num_classes`` to the file's classifier size. The load is strict, so a wrong model fails loudly.
    """
    check_not_same_file(src, dst)
    obj, source = _read(src)
    if _is_model_file(obj):
        model, report = _rebuild(obj, source)
        _check_same_model(model, source, model_name, num_classes, num_segments, overrides)
    else:
        if model_name is None:
            raise CheckpointError(f"{source}: not a tcpnet model file, so the model must be named "
                                  "(tcpnet convert --model NAME; tcpnet models lists them)")
        sd = extract_state_dict(obj, source)
        if num_classes is None:
            num_classes = _infer_num_classes(sd, source)
        model = build_model(model_name, num_classes=num_classes, num_segments=num_segments, **overrides)
        report = _load(model, sd, source, strict=True)
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    if os.fspath(dst).endswith(".safetensors"):
        export_safetensors(model, dst, class_names=names)
    else:
        save_model(model, dst, class_names=names)
    return report
