"""Typed run configuration: dataclasses loaded from YAML (configs/) plus ``key=value`` overrides.

The schema lives in the dataclasses below; OmegaConf checks every key and type against it, so
a typo or a wrong type fails at once with the key's name (and the file it came from).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

__all__ = [
    "Config", "ModelConfig", "DataConfig", "TrainConfig", "TestConfig", "ConfigError",
    "load_config", "config_from_dict", "config_to_dict", "config_to_yaml", "save_config",
    "parse_views",
]


class ConfigError(ValueError):
    """A configuration file or override names an unknown key, a wrong type or a bad value."""


@dataclass
class ModelConfig:
    name: str = "tcp_tsn_r50"           # registry name, see tcpnet.models.list_models()
    num_segments: int = 8               # T, frames per clip
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
    list_format: str = "auto"           # auto | tsn ('<path> <num_frames> <label>') | video | charades
    frame_template: str = "img_{:05d}.jpg"
    class_names: Optional[str] = None   # classes.txt, one name per line (index = label)
    num_workers: int = 4
    flip: bool = True                   # horizontal flip in training (off for Something-Something)
    multi_label: bool = False           # Charades-style labels: BCE loss, mAP metric
    crop_size: Optional[int] = None     # override the model's input_config.crop_size
    scale_size: Optional[int] = None    # override the model's input_config.scale_size
    check_files: bool = True            # before training/testing, fail listing every missing video


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 96                # clips per iteration summed over all ranks (published: total)
    lr: float = 0.015
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "step"           # step | cos
    lr_steps: List[int] = field(default_factory=lambda: [20, 40])
    warmup_epochs: float = 0.0          # linear warm-up per iteration (0: none, as published)
    lr_x_factor: float = 5.0            # lr multiplier of TCP attention and fc (bias: 2x this)
    clip_grad_norm: Optional[float] = 20.0  # published --gd; None disables clipping
    accumulate_steps: int = 1           # optimizer step every n iterations
    amp: str = "none"                   # none | bf16 | fp16 (fp16: CUDA only, with GradScaler)
    channels_last: bool = False
    sync_bn: bool = False               # SyncBatchNorm under DDP on CUDA
    max_consecutive_failures: int = 10  # undecodable videos in a row before the dataset gives up
    log_every: int = 20                 # iterations between log lines / jsonl records
    eval_every: int = 1                 # epochs between validation passes (published: 1)
    max_iters_per_epoch: Optional[int] = None  # cap iterations per epoch (smoke tests, demos)
    resume: Optional[str] = None        # training checkpoint to continue from
    auto_resume: bool = True            # continue from <output_dir>/last.pt when it exists


@dataclass
class TestConfig:
    views: str = "1x1"                  # <crops>x<clips>: 1x1 = centre crop, 3x10 = published
    fusion: str = "max-prob"            # max-prob (authors') | mean-prob | mean-logit
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


_CHOICES = {
    "train.lr_schedule": ("step", "cos"),
    "train.amp": ("none", "bf16", "fp16"),
    "test.fusion": ("max-prob", "mean-prob", "mean-logit"),
    "data.format": (None, "video", "frames"),
    "data.list_format": ("auto", "tsn", "video", "charades"),
}


def parse_views(views: str) -> tuple:
    """'3x10' -> (3 crops, 10 clips), checked at load time by the data pipeline's own parser."""
    from tcpnet.data.transforms import parse_views as parse

    try:
        return parse(views)
    except ValueError as e:
        raise ConfigError(f"test.views: {e}") from None


def _describe(e: OmegaConfBaseException, source: str) -> str:
    key = getattr(e, "full_key", None) or "?"
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, ConfigKeyError):
        return f"{source}: unknown key '{key}' ({first})"
    return f"{source}: bad value for '{key}': {first}"


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, source)) from None


def _validate(cfg: Config, source: str) -> None:
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {[a for a in allowed if a]}, got {value!r}")
    if not (cfg.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", cfg.device)):
        raise ConfigError(f"{source}: device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    positive = {"model.num_segments": cfg.model.num_segments, "train.epochs": cfg.train.epochs,
                "train.batch_size": cfg.train.batch_size, "train.accumulate_steps": cfg.train.accumulate_steps,
                "train.log_every": cfg.train.log_every, "train.eval_every": cfg.train.eval_every,
                "test.batch_size": cfg.test.batch_size}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{source}: {key} must be >= 1, got {value}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"{source}: model.dropout must be in [0, 1), got {cfg.model.dropout}")
    if cfg.train.lr <= 0:
        raise ConfigError(f"{source}: train.lr must be > 0, got {cfg.train.lr}")
    parse_views(cfg.test.views)


def _parse_override(item: str) -> DictConfig:
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=0.01")
    try:
        return OmegaConf.from_dotlist([item])
    except OmegaConfBaseException as e:
        raise ConfigError(f"override {item!r}: {str(e).splitlines()[0]}") from None


def load_config(path: Union[str, Path, None] = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file (optional) <- ``key=value`` overrides, checked against the schema."""
    cfg = OmegaConf.structured(Config)
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = OmegaConf.load(path)
        except Exception as e:  # YAML syntax errors come from PyYAML with line numbers
            raise ConfigError(f"{path}: cannot parse YAML: {e}") from e
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        source = str(path)
        cfg = _merge(cfg, loaded, source)
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
    return sorted(str(p.relative_to(SHIPPED_CONFIG_DIR).with_suffix("")) for p in SHIPPED_CONFIG_DIR.rglob("*.yaml"))


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
