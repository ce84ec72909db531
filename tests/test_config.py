"""Config: YAML + overrides, schema errors naming the key (and file), every shipped config loads."""
import dataclasses
import functools
import typing
from pathlib import Path
from typing import List

import pytest

from tcpnet.config import (RANGES, Config, ConfigError, Range, config_from_dict, config_to_dict, find_config,
                           list_configs, load_config, save_config)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  name: tcp_tiny\n  kwargs: {dim: 16}\ntrain:\n  lr: 1e-3\n  lr_steps: [3, 6]\n")
    cfg = load_config(f, ["train.lr=0.01", "model.num_segments=16", "train.amp=bf16", "model.kwargs.mid_channels=32",
                          "data.val_list=null"])
    assert isinstance(cfg, Config)
    assert cfg.model.name == "tcp_tiny" and cfg.model.num_segments == 16
    assert cfg.train.lr == pytest.approx(0.01) and isinstance(cfg.train.lr, float)
    assert cfg.train.lr_steps == [3, 6] and cfg.train.amp == "bf16"
    assert cfg.model.kwargs == {"dim": 16, "mid_channels": 32}
    assert cfg.train.momentum == 0.9 and cfg.model.num_classes is None  # defaults kept


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: 0.1\n  learning_rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.learning_rate"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"model\.nmae"):
        load_config(None, ["model.nmae=x"])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        load_config(None, ["train.lr"])


def test_wrong_type_and_bad_choice(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("model:\n  num_segments: eight\n")
    with pytest.raises(ConfigError, match=r"t\.yaml.*model\.num_segments"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"train\.amp"):
        load_config(None, ["train.amp=fp8"])
    with pytest.raises(ConfigError, match=r"test\.fusion"):
        load_config(None, ["test.fusion=vote"])
    with pytest.raises(ConfigError, match=r"test\.views"):
        load_config(None, ["test.views=3by10"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_save_and_roundtrip(tmp_path):
    cfg = load_config(None, ["train.lr=0.02", "model.kwargs.dim=8"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_shipped_config_loads(path):
    cfg = load_config(path)
    from tcpnet.models import list_models
    assert cfg.model.name in list_models()
    assert cfg.train.batch_size >= 1 and cfg.train.lr > 0


def test_shipped_configs_cover_the_zoo():
    names = {str(p.relative_to(p.parents[1])) for p in CONFIGS}
    for expected in ["k400/tcp_tsn_r50_8f.yaml", "k400/tcp_tsn_r50_16f.yaml", "k400/tcp_tea_r50_8f.yaml",
                     "k400/tcp_tea_r50_16f.yaml", "k400/tcp_tsn_r152_8f.yaml", "k400/tcp_tsn_r152_16f.yaml",
                     "mini_k200/tcp_tsn_r50_8f.yaml", "hmdb51/tcp_tsn_r50_8f.yaml", "hmdb51/tcp_tea_r50_8f.yaml",
                     "k400/tsn_r50_8f.yaml", "k400/gcp_tsn_r50_8f.yaml", "demo/tcp.yaml", "demo/gap.yaml"]:
        assert expected in names
    r50 = load_config(Path(CONFIGS[0]).parents[1] / "k400" / "tcp_tsn_r50_8f.yaml")
    assert (r50.train.lr, r50.train.lr_steps, r50.train.epochs, r50.train.batch_size) == (0.015, [20, 40], 50, 96)
    assert (r50.train.lr_x_factor, r50.train.clip_grad_norm, r50.model.partial_bn) == (5, 20, False)
    # the "16f" scripts pass 8 segments by mistake; our configs train the intended 16
    r50_16 = load_config(Path(CONFIGS[0]).parents[1] / "k400" / "tcp_tsn_r50_16f.yaml")
    assert r50_16.model.num_segments == 16
    hmdb = load_config(Path(CONFIGS[0]).parents[1] / "hmdb51" / "tcp_tsn_r50_8f.yaml")
    assert hmdb.model.partial_bn and hmdb.model.dropout == 0.8 and hmdb.train.weight_decay == 5e-4


def test_demo_configs_differ_only_in_model():
    root = Path(CONFIGS[0]).parents[1] / "demo"
    tcp, gap = load_config(root / "tcp.yaml"), load_config(root / "gap.yaml")
    assert tcp.model.name == "tcp_tiny" and gap.model.name == "tsn_tiny"
    d1, d2 = config_to_dict(tcp), config_to_dict(gap)
    d1["model"].pop("name"), d2["model"].pop("name")
    d1["model"].pop("kwargs"), d2["model"].pop("kwargs")
    d1.pop("output_dir"), d2.pop("output_dir")
    assert d1 == d2


def test_views_are_checked_when_the_config_loads():
    """test.views goes through the data pipeline's parser at load time: a crop count the
    pipeline cannot produce fails at once, naming the key, instead of at test time."""
    from tcpnet.config import ConfigError, load_config

    assert load_config(None, ["test.views=3x10"]).test.views == "3x10"
    with pytest.raises(ConfigError, match=r"test\.views: .*crops must be 1, 3, 5 or 10, got 4"):
        load_config(None, ["test.views=4x2"])


def test_config_inheritance_states_only_differences(tmp_path):
    """A config names `base:` configs (relative to itself or shipped ones); bases apply first, in
    order, then the file, then overrides; chains and cycles are handled."""
    from tcpnet.config import ConfigError, load_config

    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("model: {name: tcp_tiny, num_segments: 4}\ntrain: {lr: 0.5, epochs: 3}\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\ntrain: {lr: 0.25}\n")
    (tmp_path / "sub" / "child.yaml").write_text("base: [mid.yaml]\nmodel: {num_segments: 16}\n")
    cfg = load_config(tmp_path / "sub" / "child.yaml", ["train.epochs=7"])
    assert (cfg.model.name, cfg.model.num_segments, cfg.train.lr, cfg.train.epochs) == ("tcp_tiny", 16, 0.25, 7)
    # a shipped config as base, by its name
    (tmp_path / "mine.yaml").write_text("base: k400/tcp_tsn_r50_8f\ndata: {root: /videos}\n")
    mine = load_config(tmp_path / "mine.yaml")
    assert mine.model.name == "tcp_tsn_r50" and mine.train.lr == 0.015 and mine.data.root == "/videos"
    # a cycle, a missing base and a bad key in a base are errors naming the file
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "lost.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"lost\.yaml: base config 'nowhere\.yaml' not found"):
        load_config(tmp_path / "lost.yaml")
    (tmp_path / "badbase.yaml").write_text("train: {lrr: 1}\n")
    (tmp_path / "usesbad.yaml").write_text("base: badbase.yaml\n")
    with pytest.raises(ConfigError, match=r"badbase\.yaml: unknown key 'train\.lrr'"):
        load_config(tmp_path / "usesbad.yaml")


def test_zoo_8f_16f_pairs_differ_in_three_lines():
    """The 16-frame zoo configs inherit from their 8-frame twin and state T, lr and output_dir."""
    import yaml

    from tcpnet.config import SHIPPED_CONFIG_DIR, load_config

    child = yaml.safe_load((SHIPPED_CONFIG_DIR / "k400" / "tcp_tsn_r50_16f.yaml").read_text())
    assert child == {"base": "tcp_tsn_r50_8f.yaml", "model": {"num_segments": 16}, "train": {"lr": 0.00375},
                     "output_dir": "runs/k400_tcp_tsn_r50_16f"}
    c8 = load_config(SHIPPED_CONFIG_DIR / "k400" / "tcp_tsn_r50_8f.yaml")
    c16 = load_config(SHIPPED_CONFIG_DIR / "k400" / "tcp_tsn_r50_16f.yaml")
    assert (c16.model.num_segments, c16.train.lr, c8.train.epochs) == (16, 0.00375, c16.train.epochs)


def test_choice_lists_have_one_source():
    """The modules that act on a choice use the config's list, so the two cannot disagree."""
    from tcpnet import config
    from tcpnet.engine import evaluate, optim

    assert evaluate.FUSIONS is config.FUSIONS
    assert optim.OPTIMIZERS is config.OPTIMIZERS and optim.SCHEDULES is config.SCHEDULES


def test_new_train_keys_are_validated():
    from tcpnet.config import ConfigError, load_config

    cfg = load_config(None, ["train.optimizer=adamw", "train.ema_decay=0.99", "train.mixup_alpha=0.2"])
    assert (cfg.train.optimizer, cfg.train.ema_decay, cfg.train.mixup_alpha) == ("adamw", 0.99, 0.2)
    for bad, key in [("train.optimizer=lamb", r"train\.optimizer"), ("train.ema_decay=1.0", r"train\.ema_decay"),
                     ("train.cutmix_alpha=-1", r"train\.cutmix_alpha"), ("train.betas=[0.9]", r"train\.betas")]:
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match="single-label"):
        load_config(None, ["data.multi_label=true", "train.mixup_alpha=0.2"])


def test_empty_config_file_and_a_config_without_data_lists_are_refused(tmp_path):
    """Neither may silently start the default (Kinetics-400) recipe."""
    from tcpnet.engine.train import train

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: the config file is empty"):
        load_config(empty)
    nodata = tmp_path / "nodata.yaml"
    nodata.write_text("train: {epochs: 1}\n")
    cfg = load_config(nodata, [f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match=r"data\.train_list is not set"):
        train(cfg)
    assert not (tmp_path / "out").exists()  # refused before anything was written


# ------------------------------------------------------------------------- numeric ranges
def _holds_a_number(hint) -> bool:
    """Whether an int or a float appears anywhere in a type hint (bool does not count)."""
    return hint in (int, float) or any(_holds_a_number(a) for a in typing.get_args(hint))


def _numeric_keys() -> List[str]:
    """Dotted keys of every numeric field of Config and of each of its sections, found from the
    dataclasses themselves, so a new key is covered without being listed here."""
    keys = []
    for top in dataclasses.fields(Config):
        hint = typing.get_type_hints(Config)[top.name]
        if dataclasses.is_dataclass(hint):
            keys += [f"{top.name}.{f.name}" for f in dataclasses.fields(hint)
                     if _holds_a_number(typing.get_type_hints(hint)[f.name])]
        elif _holds_a_number(hint):
            keys.append(top.name)
    return keys


NUMERIC_KEYS = _numeric_keys()


def test_every_numeric_key_has_a_range():
    assert len(NUMERIC_KEYS) > 20  # the walk above found the sections
    missing = [k for k in NUMERIC_KEYS if k not in RANGES]
    assert not missing, f"numeric config keys without a range in tcpnet.config.RANGES: {missing}"
    stale = [k for k in RANGES if k not in NUMERIC_KEYS]
    assert not stale, f"RANGES names keys that are not numeric config fields: {stale}"


def _default(key: str):
    return functools.reduce(getattr, key.split("."), Config())


def _as_value(key: str, item):
    """``item`` in the shape of the key: a list-valued key gets its default with the first item replaced."""
    default = _default(key)
    return [item, *default[1:]] if isinstance(default, list) else item


def _bad_items(rng: Range) -> List:
    """Values outside ``rng``: negative, zero (where the range excludes it), NaN, the infinities, 2**70,
    just past each end, and an open end itself."""
    bad = [-1, 0, float("nan"), float("inf"), float("-inf"), 2**70, -2**70, rng.lo - 1, rng.hi + 1]
    bad += [rng.lo] if rng.lo_open else []
    bad += [rng.hi] if rng.hi_open else []
    return [v for v in bad if v not in rng]


BAD_CASES = [(key, v) for key in NUMERIC_KEYS for v in _bad_items(RANGES.get(key, Range(0, 0)))]


@pytest.mark.parametrize("key, item", BAD_CASES, ids=[f"{k}={v}" for k, v in BAD_CASES])
def test_numeric_key_out_of_range_is_one_line_naming_the_key(key, item):
    """From an override (YAML-typed, so 2**70 and nan reach int keys too) and from a dict (a checkpoint's
    copy): a ConfigError of one line with the key and its allowed range."""
    value = _as_value(key, item)
    override = f"{key}={value}"
    *sections, name = key.split(".")
    as_dict = {name: value}
    for section in reversed(sections):
        as_dict = {section: as_dict}
    for load in (lambda: load_config(None, [override]), lambda: config_from_dict(as_dict)):
        with pytest.raises(ConfigError) as e:
            load()
        msg = str(e.value)
        assert key in msg and str(RANGES[key]) in msg and "\n" not in msg, msg


@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_numeric_key_accepts_its_closed_ends(key):
    rng = RANGES[key]
    ends = ([] if rng.lo_open else [rng.lo]) + ([] if rng.hi_open else [rng.hi])
    for end in ends:
        value = _as_value(key, end)
        cfg = load_config(None, [f"{key}={value}"])
        assert functools.reduce(getattr, key.split("."), cfg) == value


def test_range_errors_from_the_issue():
    """The reported cases: each fails when the config loads, naming the key and the allowed range."""
    cases = {"train.clip_grad_norm=-1": "train.clip_grad_norm must be > 0 and <= 1_000_000, or null, got -1.0",
             "train.max_iters_per_epoch=-1": "train.max_iters_per_epoch must be >= 1",
             "train.lr=nan": "train.lr must be > 0 and <= 100, got nan",
             "train.lr=inf": "train.lr must be > 0", "train.warmup_epochs=nan": "train.warmup_epochs must be >= 0",
             "seed=2**70": "'seed': Value '2**70' of type 'str' could not be converted to Integer; seed must be an "
                           "integer >= 0 and <= 18_446_744_073_709_551_615",
             f"seed={2**70}": "seed must be >= 0 and <= 18_446_744_073_709_551_615, got 1180591620717411303424",
             "model.num_segments=100000": "model.num_segments must be >= 1 and <= 1024 frames, or null, got 100000",
             "train.lr_steps=[20,-40]": "every item of train.lr_steps must be >= 1"}
    for override, expected in cases.items():
        with pytest.raises(ConfigError) as e:
            load_config(None, [override])
        assert expected in str(e.value), str(e.value)


def test_a_yaml_file_out_of_range_names_file_and_key(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("train:\n  clip_grad_norm: -1\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: train\.clip_grad_norm must be > 0"):
        load_config(f)
    f.write_text("seed: 2**70\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: bad value for 'seed'.*seed must be an integer >= 0"):
        load_config(f)


def test_a_range_error_on_the_command_line_is_one_line(tmp_path, capsys):
    import logging

    from tcpnet.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        rc = main(["train", "demo/tcp", "seed=2**70", f"output_dir={tmp_path / 'run'}"])
    finally:  # the CLI configures logging
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [line for line in err.splitlines()
                                                                    if line.startswith("tcpnet: error:")]
    assert "seed must be an integer >= 0" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", list_configs())
def test_shipped_configs_are_in_range(name):
    cfg = load_config(find_config(name))
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_defaults_are_in_range():
    assert config_from_dict(config_to_dict(Config())) == load_config(None) == Config()
