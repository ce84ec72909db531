"""Dense clips from a config (``data.sampler: dense``, ``data.frame_interval``): the sampler's indices
against the official rule worked by hand, the config keys' refusals, config -> datasets, the
checkpoint keeping the sampling for ``tcpnet test``/``predict``, and resume refusing a change."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tcpnet.apps.predict import build_predict_dataset, predict_videos
from tcpnet.checkpoints import build_model_from_checkpoint
from tcpnet.checkpoints.io import save_model
from tcpnet.config import SHIPPED_CONFIG_DIR, ConfigError, DataConfig, config_to_dict, load_config
from tcpnet.data import load_clip
from tcpnet.data.build import build_datasets, build_test_dataset, resolve_input_config
from tcpnet.data.records import VideoRecord
from tcpnet.data.samplers import IntervalSampler, TSNTestSampler, build_sampler
from tcpnet.data.transforms import CenterCrop, ResizeShorterSide, to_float
from tcpnet.engine.checkpoint import check_resume_config, config_differences
from tcpnet.input_config import InputConfig
from tcpnet.models import build_model
from videos import make_frames, write_video


# ------------------------------------------------------------------ the official rule, by hand
def test_train_starts_cover_every_official_start_and_no_other():
    """mmaction2 ``mmaction/datasets/transforms/loading.py`` (commit 08de558), ``SampleFrames.
    _get_train_clips`` with num_clips=1: ``avg_interval = F - clip_len*frame_interval + 1`` possible
    starts, ``randint(avg_interval)``; frames ``start + k*frame_interval``. VideoMAE 16x4, F=70:
    starts 0..6 (70 - 64 + 1 = 7 of them)."""
    s = IntervalSampler(16, 4, "train")
    clips = [s(70, np.random.default_rng(seed)) for seed in range(300)]
    assert {int(c[0]) for c in clips} == set(range(7))
    for c in clips:
        assert c.tolist() == [int(c[0]) + 4 * k for k in range(16)]
    # F < T*I: ``avg_interval <= 0`` and F <= clip_len*frame_interval, so offset 0; 'loop' wraps mod F
    assert s(50, np.random.default_rng(0)).tolist() == [(4 * k) % 50 for k in range(16)]
    assert s(64, np.random.default_rng(0)).tolist() == [4 * k for k in range(16)]  # exactly one start


def test_val_is_the_centre_clip():
    """mmaction2 ``SampleFrames._get_test_clips`` with num_clips=1 (the val pipelines of the Swin,
    VideoMAE and X3D configs): ``ori_clip_len = (clip_len - 1)*frame_interval + 1``,
    ``max_offset = max(F - ori_clip_len, 0)``, start ``max_offset // 2``. Swin 32x2, F=300:
    ori 63, max_offset 237, start 118; F=40: start 0, frames wrap mod 40."""
    s = IntervalSampler(32, 2, "val")
    assert s(300).tolist() == [118 + 2 * k for k in range(32)]
    assert s(40).tolist() == [(2 * k) % 40 for k in range(32)]
    assert build_sampler("test", 32, num_clips=1, frame_interval=2)(300).tolist() == s(300).tolist()


def test_test_clips_spread_from_start_to_end():
    """mmaction2 ``SampleFrames._get_test_clips`` with num_clips=N > 1: ``offset_between =
    max_offset / (N - 1)``, starts ``np.round(arange(N) * offset_between)``. X3D-S 13x6, 10 clips,
    F=300: ori 73, max_offset 227, step 25.222..: 0, 25, 50, 76, 101, 126, 151, 177, 202, 227.
    VideoMAE 16x4, 5 clips, F=300: max_offset 239, step 59.75: 0, 59.75->60, 119.5->120 (half to
    even), 179.25->179, 239. (SlowFast's uniform test starts ``delta * i / (N - 1)`` are the same
    spread over the video.)"""
    x3d = IntervalSampler(13, 6, "test", num_clips=10)(300).reshape(10, 13)
    assert x3d[:, 0].tolist() == [0, 25, 50, 76, 101, 126, 151, 177, 202, 227]
    assert np.all(np.diff(x3d, axis=1) == 6) and x3d.max() == 227 + 72 == 299
    mae = IntervalSampler(16, 4, "test", num_clips=5)(300).reshape(5, 16)
    assert mae[:, 0].tolist() == [0, 60, 120, 179, 239]
    short = IntervalSampler(16, 4, "test", num_clips=5)(30).reshape(5, 16)  # max_offset 0: every clip at 0
    assert np.all(short == [(4 * k) % 30 for k in range(16)])


def test_interval_sampler_refuses_bad_arguments():
    with pytest.raises(ValueError, match="frame_interval"):
        IntervalSampler(8, 0)
    with pytest.raises(ValueError, match="mode"):
        IntervalSampler(8, 2, "eval")


# ------------------------------------------------------------------ config keys
@pytest.mark.parametrize("overrides, key", [
    (["data.sampler=dense"], "data.frame_interval"),
    (["data.sampler=tsn", "data.frame_interval=4"], "data.frame_interval"),
    (["data.sampler=uniform"], "data.sampler"),
    (["data.sampler=dense", "data.frame_interval=0"], "data.frame_interval"),
    (["data.sampler=dense", "data.frame_interval=1000"], "data.frame_interval"),
])
def test_config_refusals_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_frame_interval_alone_changes_a_dense_model_and_is_refused_on_a_tsn_one():
    dense = InputConfig(num_segments=16, sampler="dense", frame_interval=4)
    assert resolve_input_config(DataConfig(frame_interval=2), dense).frame_interval == 2
    assert resolve_input_config(DataConfig(), dense) is dense  # null keys: the model's own
    with pytest.raises(ConfigError, match="data.frame_interval"):
        resolve_input_config(DataConfig(frame_interval=2), InputConfig())
    back = resolve_input_config(DataConfig(sampler="tsn"), dense)
    assert (back.sampler, back.frame_interval) == ("tsn", None)


def test_config_to_datasets_picks_the_dense_sampler():
    """The VideoMAE recipe: 16 frames every 4th; val the centre clip, test 3 crops x 5 clips."""
    cfg = load_config(SHIPPED_CONFIG_DIR / "k400" / "videomae_vit_b_16f.yaml")
    assert (cfg.data.sampler, cfg.data.frame_interval, cfg.test.views) == ("dense", 4, "3x5")
    ic = resolve_input_config(cfg.data, InputConfig(num_segments=16, crop_size=224, scale_size=224))
    records = [VideoRecord("a.mp4", 300, 0), VideoRecord("b.mp4", 120, 1)]
    sets = build_datasets(cfg.data, {"train": records, "val": records}, ic, num_classes=2, seed=0)
    train, val = sets["train"].sampler, sets["val"].sampler
    assert isinstance(train, IntervalSampler) and (train.mode, train.frame_interval) == ("train", 4)
    assert isinstance(val, IntervalSampler) and val.mode == "val" and val(300)[0] == 119
    test = build_test_dataset(cfg.data, records, ic, views=cfg.test.views, num_classes=2)
    assert isinstance(test.sampler, IntervalSampler) and (test.sampler.mode, test.num_clips) == ("test", 5)
    with pytest.raises(ValueError, match="input_config.sampler"):  # the trainer must resolve first
        build_datasets(cfg.data, {"train": records}, dataclasses.replace(ic, sampler="tsn", frame_interval=None),
                       num_classes=2, seed=0)


@pytest.mark.parametrize("name, interval", [("videomae_vit_b_16f", 4), ("videomae_vit_s_16f", 4),
                                            ("swin3d_t_32f", 2), ("tcp_swin3d_b_32f", 2),
                                            ("x3d_s_13f", 6), ("tcp_x3d_m_16f", 5)])
def test_recipes_sample_densely_at_the_official_interval(name, interval):
    cfg = load_config(SHIPPED_CONFIG_DIR / "k400" / f"{name}.yaml")
    assert (cfg.data.sampler, cfg.data.frame_interval) == ("dense", interval)


# ------------------------------------------------------------------ checkpoint -> test / predict
@pytest.fixture(scope="module")
def dense_model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("tcp_tiny", num_classes=3, num_segments=4, dim=16, mid_channels=32).eval()
    torch.nn.init.normal_(model.fc.weight, std=0.5)
    model.input_config = dataclasses.replace(model.input_config, sampler="dense", frame_interval=3)
    path = tmp_path_factory.mktemp("dense") / "model.pt"
    save_model(model, path)
    return path


def test_checkpoint_keeps_the_sampling_and_test_uses_it(dense_model_file):
    model = build_model_from_checkpoint(dense_model_file)
    assert (model.input_config.sampler, model.input_config.frame_interval) == ("dense", 3)
    test = build_test_dataset(DataConfig(), [VideoRecord("v.mp4", 50, 0)], model.input_config,
                              views="1x3", num_classes=3)
    assert isinstance(test.sampler, IntervalSampler)
    assert test.sampler(50).reshape(3, 4)[:, 0].tolist() == [0, 20, 40]  # max_offset 50 - 10 = 40
    old = build_test_dataset(DataConfig(), [VideoRecord("v.mp4", 50, 0)], InputConfig.from_dict(
        {k: v for k, v in model.input_config.to_dict().items() if k not in ("sampler", "frame_interval")}),
        views="1x3", num_classes=3)
    assert isinstance(old.sampler, TSNTestSampler)  # a file from before the keys: TSN, as it was trained


def test_predict_uses_the_checkpoint_s_dense_clip(dense_model_file, tmp_path):
    """predict on a dense-trained model = the centre dense clip, resized and cropped, by hand."""
    model = build_model_from_checkpoint(dense_model_file)
    video = write_video(tmp_path / "v.mp4", make_frames(30, 48, 80, seed=3))
    assert isinstance(build_predict_dataset(model, [str(video)]).sampler, IntervalSampler)
    pred = predict_videos(model, [str(video)], topk=3)[0]
    ic = model.input_config
    start = (30 - (3 * 3 + 1)) // 2  # 10: the centre clip of frames 10, 13, 16, 19
    frames = load_clip(video, [start + 3 * k for k in range(4)])
    x = CenterCrop(ic.crop_size)(ResizeShorterSide(ic.scale_size)(frames))
    with torch.no_grad():
        probs = model(to_float(x, ic).unsqueeze(0))[0].softmax(-1)
    assert pred.error is None
    for t in pred.topk:
        assert t["prob"] == pytest.approx(probs[t["label"]].item(), abs=1e-6)


# ------------------------------------------------------------------ resume
def test_resume_refuses_a_changed_sampler():
    saved = config_to_dict(load_config(None, ["data.sampler=dense", "data.frame_interval=4"]))
    for overrides, key in [(["data.sampler=tsn"], "data.sampler"),
                           (["data.sampler=dense", "data.frame_interval=2"], "data.frame_interval")]:
        current = config_to_dict(load_config(None, overrides))
        assert any(d.startswith(key) for d in config_differences(saved, current))
        with pytest.raises(ConfigError, match=key):
            check_resume_config("last.pt", saved, current, force=False)
    older = {k: v for k, v in config_to_dict(load_config(None)).items()}
    older["data"] = {k: v for k, v in older["data"].items() if k not in ("sampler", "frame_interval")}
    assert config_differences(older, config_to_dict(load_config(None))) == []  # a file from before the keys


def test_the_sampler_choices_have_one_source():
    from tcpnet import config
    from tcpnet.data import dataset

    assert dataset.SAMPLERS is config.SAMPLERS
    with pytest.raises(ValueError, match="input_config.sampler"):
        build_test_dataset(DataConfig(), [VideoRecord("v.mp4", 50, 0)], InputConfig(sampler="uniform"),
                           views="1x1", num_classes=3)
