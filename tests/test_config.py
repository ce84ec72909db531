"""Config: YAML + overrides, schema errors naming the key (and file), every shipped config loads."""
from pathlib import Path

import pytest

from tcpnet.config import Config, ConfigError, config_from_dict, config_to_dict, load_config, save_config

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
