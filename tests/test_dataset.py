"""VideoDataset on real mp4s: DataLoader workers, bad-item policy and its count across worker
processes, reproducibility with seed + epoch, multi-view test items."""
from __future__ import annotations

import gc
import logging
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tcpnet.data import DecodeError, load_clip
from tcpnet.data import VideoRecord
from tcpnet.data.dataset import VideoDataset
from tcpnet.data.samplers import TSNTestSampler
from tcpnet.data.transforms import resize, to_float
from tcpnet.input_config import InputConfig
from videos import make_frames, write_video

CFG = InputConfig(crop_size=32, scale_size=40, num_segments=4)
LENGTHS = [24, 30, 36, 20, 28, 40]
CORRUPT = 3  # position of the corrupt file in the record list


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i, n in enumerate(LENGTHS):
        write_video(root / f"v{i}.mp4", make_frames(n, 48, 64, seed=i), gop=12)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return root


def mixed_records():
    recs = [VideoRecord(f"v{i}.mp4", n if i % 2 else None, i % 3) for i, n in enumerate(LENGTHS)]
    recs.insert(CORRUPT, VideoRecord("corrupt.mp4", None, 1))
    return recs


def train_set(root, **kw):
    return VideoDataset.from_config(mixed_records(), root, CFG, mode="train", seed=0, **kw)


def run_epoch(ds, loader):
    clips, targets = [], []
    for clip, target in loader:
        clips.append(clip)
        targets.append(target)
    return torch.cat(clips), torch.cat(targets)


def test_train_epoch_with_two_workers_counts_one_bad_item(video_root):
    ds = train_set(video_root)
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    clips, targets = run_epoch(ds, loader)
    assert clips.shape == (7, 3, 4, 32, 32) and clips.dtype == torch.float32
    assert targets.dtype == torch.int64 and targets.shape == (7,)
    bad = ds.bad_items(epoch=0)
    assert len(bad) == 1
    assert bad[0].path == str(video_root / "corrupt.mp4") and bad[0].index == CORRUPT
    assert bad[0].failures >= 1 and ds.bad_items(epoch=1) == []
    # the corrupt item was replaced by the video its generator drew next (after the sampler's
    # draws were spent on the failed attempt, none: it failed on opening), with that label
    rng = ds.item_rng(CORRUPT, 0)
    repl = int(rng.integers(len(ds)))
    while repl == CORRUPT:
        repl = int(rng.integers(len(ds)))
    assert targets[CORRUPT].item() == mixed_records()[repl].label
    assert torch.equal(clips[CORRUPT], ds.load(repl, rng))


def test_same_clips_for_any_worker_count_and_epoch(video_root):
    ds0 = train_set(video_root)
    ds2 = train_set(video_root)
    serial = DataLoader(ds0, batch_size=3, num_workers=0)
    parallel = DataLoader(ds2, batch_size=3, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        ds0.set_epoch(epoch)
        ds2.set_epoch(epoch)  # reaches the persistent workers through shared memory
        a, ta = run_epoch(ds0, serial)
        b, tb = run_epoch(ds2, parallel)
        assert torch.equal(a, b) and torch.equal(ta, tb)
        if epoch == 0:
            first = a
    assert not torch.equal(first, a)  # a new epoch draws new offsets/crops
    assert [b.index for b in ds2.bad_items(1)] == [CORRUPT]


def test_item_rng_reproduces_item(video_root):
    ds = train_set(video_root)
    ds.set_epoch(3)
    x1, _ = ds[1]
    x2, _ = ds[1]
    assert torch.equal(x1, x2)
    again = ds.load(1, ds.item_rng(1, 3))
    assert torch.equal(again, x1)


def test_test_mode_raises_naming_the_path(video_root):
    ds = VideoDataset.from_config(mixed_records(), video_root, CFG, mode="test", views="3x2")
    assert ds.on_error == "raise"
    with pytest.raises(DecodeError) as ei:
        ds[CORRUPT]
    assert str(video_root / "corrupt.mp4") in str(ei.value)
    # (not checked through a worker: torch then takes 5 s to shut the worker down)


def test_multi_view_items_match_manual_pipeline(video_root):
    ds = VideoDataset.from_config(mixed_records(), video_root, CFG, mode="test", views="3x2")
    clip, target = ds[1]
    assert clip.shape == (6, 3, 4, 40, 40) and target == 1  # 3 full-res crops x 2 clips
    idx = TSNTestSampler(4, num_clips=2)(30)
    frames = resize(load_clip(video_root / "v1.mp4", idx), (40, 53))  # shorter side 48 -> 40
    ws = (53 - 40) // 4
    for crop, x0 in enumerate([0, 4 * ws, 2 * ws]):
        for k in range(2):
            want = to_float(frames[k * 4:(k + 1) * 4, :, x0:x0 + 40], CFG)
            assert torch.equal(clip[crop * 2 + k], want)
    one, _ = VideoDataset.from_config(mixed_records(), video_root, CFG, mode="test", views="1x1")[0]
    assert one.shape == (3, 4, 32, 32)


def test_return_uint8_and_val_mode(video_root):
    ds = VideoDataset.from_config(mixed_records(), video_root, CFG, mode="val", return_uint8=True)
    x, _ = ds[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 4, 32, 32)
    ref, _ = VideoDataset.from_config(mixed_records(), video_root, CFG, mode="val")[0]
    assert torch.equal(to_float(x.movedim(0, -1), CFG), ref)


def test_gives_up_after_consecutive_failures(video_root):
    recs = [VideoRecord("corrupt.mp4", None, 0), VideoRecord("missing.mp4", 10, 0)]
    ds = VideoDataset.from_config(recs, video_root, CFG, mode="train", seed=1, max_consecutive_failures=4)
    with pytest.raises(RuntimeError, match="4 consecutive videos failed"):
        ds[0]
    assert {b.index for b in ds.bad_items()} <= {0, 1} and len(ds.bad_items()) >= 1


def test_multi_label_targets_and_pickling(video_root):
    recs = [VideoRecord("v0.mp4", 24, [1, 3]), VideoRecord("v1.mp4", None, [])]
    ds = VideoDataset.from_config(recs, video_root, CFG, mode="val", multi_label=True, num_classes=5)
    _, t0 = ds[0]
    _, t1 = ds[1]
    assert t0.tolist() == [0, 1, 0, 1, 0] and t1.sum() == 0 and t0.dtype == torch.float32
    back = pickle.loads(pickle.dumps(ds))
    assert torch.equal(back[0][0], ds[0][0])
    with pytest.raises(ValueError, match="multi_label"):
        VideoDataset.from_config(recs, video_root, CFG, mode="val")[0]


def _collect_garbage(worker_id: int) -> None:
    gc.collect()


def test_workers_survive_garbage_left_by_decoding_in_main_process(video_root):
    """Decode in the main process (e.g. evaluate), then fork workers that collect garbage: any
    FFmpeg decoder left in a reference cycle would be freed in the child and crash it."""
    ds = train_set(video_root)
    gc.collect()
    gc.disable()  # keep whatever the main process leaves behind until the workers are forked
    try:
        for i in range(len(ds)):
            ds[i]
        loader = DataLoader(ds, batch_size=4, num_workers=2, worker_init_fn=_collect_garbage,
                            multiprocessing_context="fork", timeout=15)  # a hung worker fails, not hangs
        clips, _ = run_epoch(ds, loader)
    finally:
        gc.enable()
    assert clips.shape == (7, 3, 4, 32, 32)


@pytest.mark.slow
def test_bad_item_count_with_spawned_workers(video_root):
    ds = train_set(video_root)
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn")
    clips, _ = run_epoch(ds, loader)
    assert clips.shape[0] == 7
    assert [b.path for b in ds.bad_items(0)] == [str(video_root / "corrupt.mp4")]


def test_a_one_frame_video_or_still_image_is_warned_about_once(tmp_path, caplog):
    """A 1-frame video or a still image gives a clip of one repeated frame: classified, but with a
    warning that names the file, once however often it is read."""
    from PIL import Image

    one = write_video(tmp_path / "one.mp4", make_frames(1, 48, 64, seed=1))
    still = tmp_path / "still.jpg"
    Image.fromarray(make_frames(1, 48, 64, seed=2)[0]).save(still)
    good = write_video(tmp_path / "good.mp4", make_frames(12, 48, 64, seed=3))
    records = [VideoRecord(str(p), None, 0) for p in (one, still, good)]
    ds = VideoDataset.from_config(records, "", CFG, mode="test", views="1x2")
    with caplog.at_level(logging.WARNING, logger="tcpnet.data.dataset"):
        for _ in range(3):
            for i in range(len(ds)):
                assert ds[i][0].shape == (2, 3, 4, 32, 32)
    warned = [r.getMessage() for r in caplog.records if "has 1 frame" in r.getMessage()]
    assert len(warned) == 2, warned
    assert warned[0].startswith(f"{one}: has 1 frame") and warned[1].startswith(f"{still}: has 1 frame")
