"""Typed run configuration: dataclasses loaded from YAML (configs/) plus ``key=value`` overrides.

The schema lives in the dataclasses below; OmegaConf checks every key and type against it, so
a typo or a wrong type fails at once with the key's name (and the file it came from). Every
numeric key has its allowed range in :data:`RANGES`, checked when the config loads.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

__all__ = [
    "Config", "ModelConfig", "DataConfig", "TrainConfig", "TestConfig", "ConfigError",
    "load_config", "config_from_dict", "config_to_dict", "config_to_yaml", "save_config",
    "parse_views", "parse_interval", "model_name", "DEFAULT_MODEL", "resolve_fusion", "SCHEDULES", "OPTIMIZERS", "AMP_MODES", "FUSIONS", "READERS",
    "CACHE_DTYPES",
    "SAMPLERS",
    "Range", "RANGES",
]


class ConfigError(ValueError):
    """A configuration file or override names an unknown key, a wrong type or a bad value."""


@dataclass
class ModelConfig:
    name: Optional[str] = None          # registered full model (tcpnet.models.list_models()); null: tcp_tsn_r50, or backbone+head
    backbone: Optional[str] = None      # compose instead: a registered backbone (tcpnet.backbones.list_backbones())
    head: Optional[str] = None          # ... with a registered head (tcpnet.heads.list_heads()); name becomes "<backbone>+<head>"
    num_segments: Optional[int] = None  # T, frames per clip (null: the model's own default, 8 for the 2-D zoo, 16 for R(2+1)D)
    num_classes: Optional[int] = None   # None: inferred from data.class_names or the train list
    dropout: float = 0.5                # on the pooled vector, before fc
    pretrained: Optional[str] = None    # ImageNet GCP / our model file / authors' checkpoint
    pretrained_dim: Optional[int] = None  # dim of the pretrained TCP reduction (None: = model dim)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # build_model overrides, e.g. {dim: 64}
    partial_bn: bool = False            # True = authors' default; the K400 scripts pass --npb


@dataclass
class DataConfig:
    root: str = ""                      # videos / frame folders are <root>/<relpath>
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    test_list: Optional[str] = None
    format: Optional[str] = None        # video | frames (None: inferred; readers detect files vs folders)
    list_format: str = "auto"           # a registered format: tcpnet.data.formats.list_formats()
    split: int = 1                      # hmdb51: which official split (1-3) the split folder is read for
    frame_template: Optional[str] = None  # frame folders: None = the list format's default (tcpnet.data.formats); "{id}" = the folder name
    class_names: Optional[str] = None   # classes.txt, one name per line (ucf101: classInd.txt, ssv1: labels csv)
    num_workers: int = 4
    flip: bool = True                   # horizontal flip in training (off for Something-Something)
    multi_label: bool = False           # Charades-style labels: BCE loss, mAP metric
    crop_size: Optional[int] = None     # override the model's input_config.crop_size
    scale_size: Optional[int] = None    # override the model's input_config.scale_size
    check_files: bool = True            # before training/testing, fail listing every missing video
    reader: str = "pyav"                # pyav | torchcodec (exact mode; needs torchcodec + system FFmpeg)
    cache_decoded_mb: int = 0           # decoded videos kept in memory, MiB per process (0: off; tcpnet.data.cache)
    decode_timeout: Optional[float] = 60.0  # seconds one video may take to read (null: no limit); past it, a bad video
    cache_features: Optional[str] = None  # frozen probing: keep the backbone's maps per (video, view) in DIR (tcpnet.data.feature_cache)
    cache_views: Optional[int] = None   # K fixed views per train video (0: centre, 1..K-1: seeded train views); null: 1 with a cache, else random views
    cache_dtype: str = "float16"        # float16 | float32: how the cached maps are stored
    cache_rebuild: bool = False         # rebuild a cache made for another backbone, T, input, weights or list instead of refusing it
    sampler: Optional[str] = None       # tsn (one frame per segment of the whole video) | dense (frame_interval apart); null: the model's (tsn unless trained dense)
    frame_interval: Optional[int] = None  # dense: frames between a clip's frames (VideoMAE 4, Swin 2, X3D-S 6); null: the model's


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 96                # clips per iteration summed over all ranks (published: total)
    lr: float = 0.015
    optimizer: str = "sgd"             # sgd (the published parameter groups) | adamw (same groups)
    momentum: float = 0.9               # SGD momentum
    weight_decay: float = 1e-4          # coupled L2 for SGD, decoupled for AdamW; per-group multipliers
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW only
    lr_schedule: str = "step"           # step | cos
    lr_steps: List[int] = field(default_factory=lambda: [20, 40])
    warmup_epochs: float = 0.0          # linear warm-up per iteration (0: none, as published)
    lr_x_factor: float = 5.0            # lr multiplier of TCP attention and fc (bias: bias_lr_mult x this)
    bias_lr_mult: float = 2.0           # lr of a conv/linear bias over its weight's (published TCP: 2; ViT/Swin/X3D recipes: 1)
    clip_grad_norm: Optional[float] = 20.0  # published --gd; None disables clipping
    accumulate_steps: int = 1           # optimizer step every n iterations
    amp: str = "none"                   # none | bf16 | fp16 (fp16: CUDA only, with GradScaler)
    channels_last: bool = False
    ema_decay: Optional[float] = None   # keep an EMA of the weights (e.g. 0.999), validated and saved as ema.pt
    mixup_alpha: float = 0.0            # mixup Beta(alpha, alpha) on batches (0: off); single-label data only
    cutmix_alpha: float = 0.0           # cutmix Beta(alpha, alpha) (0: off); with mixup too, one of them per batch
    sync_bn: bool = False               # SyncBatchNorm under DDP on CUDA
    max_consecutive_failures: int = 10  # undecodable videos in a row before the dataset gives up
    log_every: int = 20                 # iterations between log lines / jsonl records
    eval_every: int = 1                 # epochs between validation passes (published: 1)
    max_iters_per_epoch: Optional[int] = None  # cap iterations per epoch (smoke tests, demos)
    checkpoint_every: Optional[str] = None  # also write last.pt inside an epoch: every N iterations ("500") or minutes ("10m")
    layer_decay: Optional[float] = None  # layer-wise lr decay over the backbone's layers, e.g. 0.75 for ViT-B (null: off)
    freeze_backbone: bool = False       # probe a frozen backbone: eval mode, no gradient, no optimizer group
    label_smoothing: float = 0.0        # cross-entropy label smoothing in [0, 1) (single-label data)
    log_grad_norm: bool = False         # log the global gradient norm (before clipping) per log interval and epoch
    nonfinite: str = "stop"             # NaN/Inf loss or gradient norm: stop (keep the last good checkpoint) | skip the step
    resume: Optional[str] = None        # training checkpoint to continue from
    auto_resume: bool = True            # continue from <output_dir>/last.pt when it exists
    force_resume: bool = False          # resume although the config differs from the checkpoint's (beyond run length)


@dataclass
class TestConfig:
    views: str = "1x1"                  # <crops>x<clips>: 1x1 = centre crop, 3x10 = published
    fusion: str = "auto"                # auto: max-prob (authors') for single-label, max-sigmoid for multi-label data
    batch_size: int = 8
    checkpoint: Optional[str] = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)
    output_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    retain_freed_memory: bool = True    # glibc: keep freed memory (no page faults per step, more RSS; utils.malloc)
    imports: List[str] = field(default_factory=list)  # modules imported before the config's names are looked up (plugins)
    hooks: Dict[str, Any] = field(default_factory=dict)  # options of registered loop hooks by name (plugins' own keys)


DEFAULT_MODEL = "tcp_tsn_r50"


def model_name(mc: ModelConfig) -> str:
    """The model a ModelConfig asks for: ``<backbone>+<head>`` when composed, else ``name``
    (``DEFAULT_MODEL`` when unset)."""
    if mc.backbone is not None or mc.head is not None:
        return f"{mc.backbone}+{mc.head}"
    return mc.name or DEFAULT_MODEL


# The one source of each list of choices; the modules that act on a choice import it from here.
SCHEDULES = ("step", "cos")
OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("none", "bf16", "fp16")
FUSIONS = ("auto", "max-prob", "mean-prob", "mean-logit", "max-sigmoid", "mean-sigmoid")
NONFINITE = ("stop", "skip")
DATA_FORMATS = (None, "video", "frames")
READERS = ("pyav", "torchcodec")
CACHE_DTYPES = ("float16", "float32")
SAMPLERS = ("tsn", "dense")  # temporal sampling: tcpnet.data.samplers (TSN* / IntervalSampler)
VIEW_CROPS = (1, 3, 5, 10)

_CHOICES = {
    "train.lr_schedule": SCHEDULES,
    "train.optimizer": OPTIMIZERS,
    "train.amp": AMP_MODES,
    "test.fusion": FUSIONS,
    "train.nonfinite": NONFINITE,
    "data.format": DATA_FORMATS,
    "data.reader": READERS,
    "data.cache_dtype": CACHE_DTYPES,
    "data.sampler": (None, *SAMPLERS),
}


@dataclass(frozen=True)
class Range:
    """The values a numeric key allows: ``lo``..``hi``, each end closed or open; NaN and the
    infinities never pass. A list-valued key applies it to every item."""
    lo: Union[int, float]
    hi: Union[int, float]
    lo_open: bool = False
    hi_open: bool = False
    unit: str = ""

    def __contains__(self, value: Union[int, float]) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return (f"{'>' if self.lo_open else '>='} {_number(self.lo)} and "
                f"{'<' if self.hi_open else '<='} {_number(self.hi)}{unit}")


def _number(v: Union[int, float]) -> str:
    """A bound as a person reads it: 0.5, 1, 100000, 1_000_000 (digits grouped from a million up)."""
    if isinstance(v, float) and not v.is_integer():
        return f"{v:g}"
    return f"{int(v):_}" if abs(v) >= 10**6 else str(int(v))


_UNIT = Range(0.0, 1.0, hi_open=True)  # [0, 1): dropout, momentum, betas, smoothing

# The allowed range of every numeric key (int or float, Optional or list of them: null always
# passes where the type allows it). One entry per key; tests/test_config.py fails on a numeric
# field of the dataclasses above that has none. Upper bounds catch typos and values that would
# exhaust memory (a clip of 100000 frames) while leaving room for every real recipe.
RANGES: Dict[str, Range] = {
    "model.num_segments": Range(1, 1024, unit="frames"),
    "model.num_classes": Range(1, 100_000),
    "model.dropout": _UNIT,
    "model.pretrained_dim": Range(1, 8192),
    "data.split": Range(1, 100),
    "data.num_workers": Range(0, 1024),
    "data.crop_size": Range(1, 4096, unit="pixels"),
    "data.scale_size": Range(1, 4096, unit="pixels"),
    "data.cache_decoded_mb": Range(0, 2**20, unit="MiB"),
    "data.decode_timeout": Range(0.0, 86400.0, lo_open=True, unit="seconds"),
    "data.cache_views": Range(1, 1024, unit="views"),
    "data.frame_interval": Range(1, 256, unit="frames"),
    "train.epochs": Range(1, 100_000),
    "train.batch_size": Range(1, 1_000_000),
    "train.lr": Range(0.0, 100.0, lo_open=True),
    "train.momentum": _UNIT,
    "train.weight_decay": Range(0.0, 1.0),
    "train.betas": _UNIT,
    "train.lr_steps": Range(1, 100_000, unit="epochs"),
    "train.warmup_epochs": Range(0.0, 10_000.0),
    "train.lr_x_factor": Range(0.0, 1000.0, lo_open=True),
    "train.bias_lr_mult": Range(0.0, 100.0, lo_open=True),  # 0 would freeze every bias: use a frozen backbone instead
    "train.clip_grad_norm": Range(0.0, 1e6, lo_open=True),  # null, not 0, disables clipping
    "train.accumulate_steps": Range(1, 10_000),
    "train.ema_decay": Range(0.0, 1.0, lo_open=True, hi_open=True),
    "train.layer_decay": Range(0.0, 1.0, lo_open=True),
    "train.mixup_alpha": Range(0.0, 100.0),
    "train.cutmix_alpha": Range(0.0, 100.0),
    "train.max_consecutive_failures": Range(1, 1_000_000),
    "train.log_every": Range(1, 1_000_000, unit="iterations"),
    "train.eval_every": Range(1, 100_000, unit="epochs"),
    "train.max_iters_per_epoch": Range(1, 10**9),
    "train.label_smoothing": _UNIT,
    "test.batch_size": Range(1, 1_000_000),
    "seed": Range(0, 2**64 - 1),  # what torch.manual_seed accepts (numpy's SeedSequence: any int >= 0)
}


def _numeric_type(hint: Any) -> Optional[type]:
    """``int`` or ``float`` for the type hint of a numeric field (also inside ``Optional[...]`` or
    ``List[...]``), else None (``bool`` is not numeric here)."""
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (Union, list) and len(args) == 1:
        return _numeric_type(args[0])
    return hint if hint in (int, float) else None


@functools.lru_cache(maxsize=None)
def _field_hint(key: str) -> Any:
    """The resolved type hint of a dotted key (``train.lr``, ``seed``)."""
    *sections, name = key.split(".")
    cls: Any = Config
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    return typing.get_type_hints(cls)[name]


def _expected(key: str, kind: bool = False) -> str:
    """``train.lr must be > 0 and <= 100``: what a range error says (``kind``: integer or number too)."""
    hint = _field_hint(key)
    is_int = _numeric_type(hint) is int
    what = ("an integer " if is_int else "a number ") if kind else ""
    null = ", or null" if type(None) in typing.get_args(hint) else ""
    if typing.get_origin(hint) is list:
        return f"every item of {key} must be {what}{RANGES[key]}"
    return f"{key} must be {what}{RANGES[key]}{null}"


def _check_ranges(cfg: "Config", source: str) -> None:
    """Every key of :data:`RANGES` holds an allowed value (or null where its type allows it)."""
    for key, allowed in RANGES.items():
        value = functools.reduce(getattr, key.split("."), cfg)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in allowed:
                raise ConfigError(f"{source}: {_expected(key)}, got {value!r}")


def parse_interval(text: Union[str, int]) -> Tuple[str, float]:
    """``"500"`` -> ("iters", 500); ``"10m"``/``"10min"``/``"2.5m"`` -> ("minutes", 10.0)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(m|min|minutes)?\s*", str(text))
    if not m or float(m.group(1)) <= 0 or (m.group(2) is None and "." in m.group(1)):
        raise ValueError(f"expected a number of iterations ('500') or minutes ('10m'), got {text!r}")
    return ("minutes", float(m.group(1))) if m.group(2) else ("iters", int(m.group(1)))


def parse_views(views: Union[str, Tuple[int, int]]) -> Tuple[int, int]:
    """``"3x10"`` -> (3 crops, 10 clips); crops must be 1, 3, 5 or 10 and clips >= 1."""
    if isinstance(views, str):
        parts = views.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"views: expected 'CROPSxCLIPS' such as '3x10' or '1x1', got {views!r}")
        crops, clips = int(parts[0]), int(parts[1])
    else:
        crops, clips = (int(v) for v in views)
    if crops not in VIEW_CROPS:
        raise ValueError(f"views: number of crops must be 1, 3, 5 or 10, got {crops}")
    if clips < 1:
        raise ValueError(f"views: number of clips must be >= 1, got {clips}")
    return crops, clips


def resolve_fusion(fusion: str, multi_label: bool) -> str:
    """``auto`` -> the protocol of the data: softmax max over views (the authors') for single-label
    classes, sigmoid max over views (the SlowFast Charades protocol) for multi-label data."""
    if fusion == "auto":
        return "max-sigmoid" if multi_label else "max-prob"
    return fusion


def _describe(e: OmegaConfBaseException, source: str) -> str:
    key = getattr(e, "full_key", None) or "?"
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, ConfigKeyError):
        return f"{source}: unknown key '{key}' ({first})"
    ranged = re.sub(r"\[\d+\]$", "", key)  # train.lr_steps[1] -> train.lr_steps
    hint = f"; {_expected(ranged, kind=True)}" if ranged in RANGES else ""
    return f"{source}: bad value for '{key}': {first}{hint}"


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, source)) from None


def _validate(cfg: Config, source: str) -> None:
    _check_ranges(cfg, source)
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {[a for a in allowed if a]}, got {value!r}")
    if not (cfg.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", cfg.device)):
        raise ConfigError(f"{source}: device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    mc = cfg.model
    if (mc.backbone is None) != (mc.head is None):
        raise ConfigError(f"{source}: model.backbone and model.head go together (got backbone={mc.backbone!r}, "
                          f"head={mc.head!r}); or name a registered full model with model.name")
    if mc.backbone is not None and mc.name not in (None, model_name(mc)):
        raise ConfigError(f"{source}: model.name={mc.name!r} and model.backbone/model.head={model_name(mc)!r} "
                          "name two models; set one of them")
    if cfg.train.label_smoothing and cfg.data.multi_label:
        raise ConfigError(f"{source}: train.label_smoothing is for single-label data; data.multi_label is true")
    if cfg.data.multi_label and (cfg.train.mixup_alpha > 0 or cfg.train.cutmix_alpha > 0):
        raise ConfigError(f"{source}: train.mixup_alpha/cutmix_alpha are for single-label data; "
                          "data.multi_label is true")
    _check_feature_cache(cfg, source)
    if cfg.train.checkpoint_every is not None:
        try:
            parse_interval(cfg.train.checkpoint_every)
        except ValueError as e:
            raise ConfigError(f"{source}: train.checkpoint_every: {e}") from None
    _check_sampling(cfg.data, source)
    if len(cfg.train.betas) != 2:
        raise ConfigError(f"{source}: train.betas must be two numbers, each {RANGES['train.betas']}, "
                          f"got {cfg.train.betas}")
    try:
        parse_views(cfg.test.views)
    except ValueError as e:
        raise ConfigError(f"{source}: test.views: {e}") from None


def _check_feature_cache(cfg: Config, source: str) -> None:
    """``data.cache_features`` holds a frozen backbone's maps: refuse, naming the keys, the settings
    whose training forward would need pixels or a backbone that learns."""
    dc, tc = cfg.data, cfg.train
    if not dc.cache_features:
        if dc.cache_rebuild:
            raise ConfigError(f"{source}: data.cache_rebuild=true needs data.cache_features (a cache directory)")
        return
    if not tc.freeze_backbone:
        raise ConfigError(f"{source}: data.cache_features={dc.cache_features} needs train.freeze_backbone=true: "
                          "the cache holds a frozen backbone's output maps, which a backbone that trains changes")
    if tc.mixup_alpha > 0 or tc.cutmix_alpha > 0:
        raise ConfigError(f"{source}: train.mixup_alpha/train.cutmix_alpha mix pixels, and data.cache_features "
                          "trains on cached maps without pixels; set both to 0, or unset data.cache_features")


def _check_sampling(data: DataConfig, source: str) -> None:
    """``data.sampler: dense`` needs its ``data.frame_interval``; TSN segments have none. (With the
    sampler null, a frame interval overrides a densely trained model's, checked against the model.)"""
    if data.sampler == "dense" and data.frame_interval is None:
        raise ConfigError(f"{source}: data.sampler=dense needs data.frame_interval (frames between a clip's "
                          "frames, e.g. 4 for VideoMAE's 16x4)")
    if data.sampler == "tsn" and data.frame_interval is not None:
        raise ConfigError(f"{source}: data.frame_interval={data.frame_interval} is for data.sampler=dense; "
                          "data.sampler=tsn takes one frame per segment of the whole video")


def _parse_override(item: str) -> DictConfig:
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=0.01")
    try:
        return OmegaConf.from_dotlist([item])
    except OmegaConfBaseException as e:
        raise ConfigError(f"override {item!r}: {str(e).splitlines()[0]}") from None


BASE_KEY = "base"


def _resolve_base(name: str, including: Path) -> Path:
    """A ``base:`` entry: relative to the including file's folder, else a shipped config name."""
    for cand in (including.parent / name, SHIPPED_CONFIG_DIR / name):
        for path in (cand, cand.with_name(cand.name + ".yaml")):
            if path.is_file():
                return path.resolve()
    raise ConfigError(f"{including}: base config {name!r} not found (looked next to this file and "
                      f"among the shipped configs)")


def _config_layers(path: Path, chain: Tuple[Path, ...] = ()) -> List[Tuple[str, DictConfig]]:
    """``(source, mapping)`` of ``path`` and, before it, every config it names under ``base:``
    (a string or a list, applied in order), so a child states only what differs."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"{path}: base configs form a cycle: {cycle}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # YAML syntax errors come from PyYAML with line numbers
        raise ConfigError(f"{path}: cannot parse YAML: {e}") from e
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if len(loaded) == 0:
        raise ConfigError(f"{path}: the config file is empty (an empty file would silently run the "
                          "default recipe); state at least the model and data keys")
    bases = loaded.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (OmegaConf.is_list(bases) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a config path or a list of them")
    layers: List[Tuple[str, DictConfig]] = []
    for name in bases:
        layers += _config_layers(_resolve_base(name, path), (*chain, path))
    return layers + [(str(path), loaded)]


def load_config(path: Union[str, Path, None] = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- base configs <- YAML file (optional) <- ``key=value`` overrides, checked
    against the schema; an error names the file (or override) that brought the bad key."""
    cfg = OmegaConf.structured(Config)
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        for layer_source, layer in _config_layers(path):
            cfg = _merge(cfg, layer, layer_source)
        source = str(path)
    for item in overrides:
        cfg = _merge(cfg, _parse_override(item), f"override {item!r}")
    obj = OmegaConf.to_object(cfg)
    _validate(obj, source if not overrides else f"{source} + overrides")
    return obj


def config_from_dict(d: Dict[str, Any], source: str = "<dict>") -> Config:
    """Rebuild a Config from its plain-dict form (e.g. the copy stored in a checkpoint)."""
    cfg = _merge(OmegaConf.structured(Config), OmegaConf.create(d), source)
    obj = OmegaConf.to_object(cfg)
    _validate(obj, source)
    return obj


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    """Plain nested dict (YAML/JSON/checkpoint friendly)."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write the resolved config, so a run can be repeated from its output directory alone."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(config_to_yaml(cfg))


# ------------------------------------------------------------------------- shipped configs
SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def list_configs() -> List[str]:
    """Names of the shipped configs (``demo/tcp``, ``k400/tcp_tsn_r50_8f``, ...). They live inside
    the package (``tcpnet/configs``; the repository's ``configs/`` links there), so they are found
    from a wheel install as well as from a checkout."""
    return sorted(str(p.relative_to(SHIPPED_CONFIG_DIR).with_suffix(""))
                  for p in SHIPPED_CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("_"))


def find_config(name: Union[str, Path]) -> Path:
    """``name`` if it is an existing file, else the shipped config ``<name>[.yaml]`` (a leading
    ``configs/`` is allowed), so ``tcpnet train demo/tcp`` works from any directory."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    rel = str(name)
    rel = rel[len("configs/"):] if rel.startswith("configs/") else rel
    for cand in (SHIPPED_CONFIG_DIR / rel, SHIPPED_CONFIG_DIR / f"{rel}.yaml"):
        if cand.is_file():
            return cand
    known = list_configs()
    hint = f"; shipped configs: {', '.join(known)}" if known else ""
    raise ConfigError(f"{name}: config file not found{hint}")
