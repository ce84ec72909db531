"""tcpnet.data.cache: whole decoded videos kept in memory give exactly what load_clip gives,
within the byte bound, and are decoded again when the file changes."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from videos import make_frames, write_frame_folder, write_video

from tcpnet.data import DecodeError, FrameIndexError, load_clip
from tcpnet.data.readers import pyav as video_reader
from tcpnet.data.cache import DecodedVideoCache, clear_shared_cache, load_clip_cached, shared_cache

H, W, T = 32, 48, 20
VIDEO_BYTES = T * H * W * 3


@pytest.fixture
def videos(tmp_path):
    """Three 20-frame H.264 videos with B-frames and a keyframe every 8 (the reader plans restarts)."""
    return [write_video(tmp_path / f"v{i}.mp4", make_frames(T, H, W, seed=i), gop=8, bframes=2)
            for i in range(3)]


CLIPS = [np.array([0, 3, 6, 9, 12, 15, 18, 19]), np.array([19, 2, 2, 7]), np.array([5]), np.array([], np.int64),
         torch.tensor([1, 0]), [4, 4, 4]]


def test_cached_frames_equal_load_clip_bit_for_bit(videos):
    cache = DecodedVideoCache(10 * VIDEO_BYTES)
    for _ in range(2):  # first pass fills the cache, second reads from it
        for path in videos:
            for idx in CLIPS:
                got = cache.load(path, idx)
                want = load_clip(path, idx)
                assert got.dtype == torch.uint8 and got.shape == want.shape
                assert torch.equal(got, want)
    assert cache.misses == len(videos) and cache.hits == 2 * len(videos) * len(CLIPS) - len(videos)


def test_a_hit_decodes_nothing_and_returns_a_copy(videos):
    cache = DecodedVideoCache(VIDEO_BYTES)
    first = cache.load(videos[0], [0, 1])
    opens = video_reader.counters["opens"], video_reader.counters["frames"]
    first.zero_()  # the caller owns what it gets: the cache is not touched
    again = cache.load(videos[0], [0, 1])
    assert (video_reader.counters["opens"], video_reader.counters["frames"]) == opens
    assert torch.equal(again, load_clip(videos[0], [0, 1]))


def test_byte_bound_is_respected_least_recently_used_goes_first(videos):
    cache = DecodedVideoCache(2 * VIDEO_BYTES)  # room for two videos
    cache.load(videos[0], [0])
    cache.load(videos[1], [0])
    cache.load(videos[0], [1])  # v0 is now the most recently used
    cache.load(videos[2], [0])  # evicts v1
    assert len(cache) == 2 and cache.nbytes == 2 * VIDEO_BYTES <= cache.max_bytes and cache.evicted == 1
    misses = cache.misses
    cache.load(videos[0], [2])
    assert cache.misses == misses  # still held
    cache.load(videos[1], [2])
    assert cache.misses == misses + 1  # decoded again


def test_video_larger_than_the_bound_is_read_directly(videos):
    cache = DecodedVideoCache(VIDEO_BYTES - 1)
    for _ in range(2):
        assert torch.equal(cache.load(videos[0], [3, 1]), load_clip(videos[0], [3, 1]))
    assert len(cache) == 0 and cache.nbytes == 0 and cache.too_large == 2
    assert DecodedVideoCache(0).load(videos[0], [0]).shape == (1, H, W, 3)


def test_changed_file_is_decoded_again(tmp_path):
    path = write_video(tmp_path / "v.mp4", make_frames(T, H, W, seed=0), gop=8)
    cache = DecodedVideoCache(4 * VIDEO_BYTES)
    before = cache.load(path, [5])
    write_video(path, make_frames(T, H, W, seed=1), gop=4)  # other pixels, other size on disk
    os.utime(path, ns=(1, 1))  # and another mtime, whatever the clock's resolution
    after = cache.load(path, [5])
    assert not torch.equal(before, after) and torch.equal(after, load_clip(path, [5]))


def test_errors_are_the_readers(videos, tmp_path):
    cache = DecodedVideoCache(10 * VIDEO_BYTES)
    for bad in ([T], [0, -1]):
        with pytest.raises(FrameIndexError) as want:
            load_clip(videos[0], bad)
        with pytest.raises(FrameIndexError) as got:
            cache.load(videos[0], bad)
        assert str(got.value) == str(want.value)
    with pytest.raises(DecodeError, match="no_such.mp4"):
        cache.load(tmp_path / "no_such.mp4", [0])
    with pytest.raises(ValueError, match="1-D"):
        cache.load(videos[0], [[0, 1]])


def test_frame_folder(tmp_path):
    frames = make_frames(6, H, W)
    folder = write_frame_folder(tmp_path / "f", frames)
    cache = DecodedVideoCache(VIDEO_BYTES)
    for idx in ([5, 0, 3], [2]):
        assert torch.equal(cache.load(folder, idx), load_clip(folder, idx))
    assert cache.misses == 1 and cache.hits == 1


def test_shared_cache_is_one_per_process_with_the_largest_bound(videos):
    clear_shared_cache()
    try:
        assert torch.equal(load_clip_cached(videos[0], [1, 2], max_bytes=VIDEO_BYTES), load_clip(videos[0], [1, 2]))
        assert shared_cache(1).max_bytes == VIDEO_BYTES  # a smaller request does not shrink it
        assert shared_cache(3 * VIDEO_BYTES).max_bytes == 3 * VIDEO_BYTES
        assert shared_cache(1).stats()["videos"] == 1
    finally:
        clear_shared_cache()
    with pytest.raises(ValueError, match="max_bytes"):
        DecodedVideoCache(-1)


class _CachedClips(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        clip = load_clip_cached(self.paths[i], [0, 1], max_bytes=10 * VIDEO_BYTES)
        return clip, len(shared_cache(1))


def test_workers_read_directly(videos):
    """A DataLoader worker does not fill a cache of its own (it would die with the worker)."""
    clear_shared_cache()
    loader = torch.utils.data.DataLoader(_CachedClips(videos), batch_size=None, num_workers=1)
    for (clip, held), path in zip(loader, videos):
        assert held == 0 and torch.equal(clip, load_clip(path, [0, 1]))
    assert shared_cache(1).stats()["misses"] == 0
    clear_shared_cache()


def test_dataset_with_the_cache_gives_the_same_items(videos):
    """VideoDataset (train pipeline: random segments and crops per epoch) with and without
    ``decoded_cache_bytes``: identical clips in every epoch; after the first, nothing is decoded."""
    from tcpnet.data import DecodeSpec, VideoDataset, VideoRecord
    from tcpnet.input_config import InputConfig

    records = [VideoRecord(str(p), T, i) for i, p in enumerate(videos)]
    cfg = InputConfig(crop_size=32, scale_size=32, num_segments=4)
    plain, cached = (VideoDataset.from_config(records, input_config=cfg, mode="train", seed=3,
                                              decode=DecodeSpec(cache_bytes=nbytes)) for nbytes in (0, 10 * VIDEO_BYTES))
    clear_shared_cache()
    try:
        for epoch in range(3):
            plain.set_epoch(epoch)
            cached.set_epoch(epoch)
            for i in range(len(records)):
                opens = video_reader.counters["opens"]
                clip, label = cached[i]
                assert epoch == 0 or video_reader.counters["opens"] == opens
                want_clip, want_label = plain[i]
                assert torch.equal(clip, want_clip) and label == want_label
        assert shared_cache(1).stats()["misses"] == len(records)
    finally:
        clear_shared_cache()


def test_config_key():
    from tcpnet.config import ConfigError, load_config

    assert load_config(None, ["data.cache_decoded_mb=64"]).data.cache_decoded_mb == 64
    with pytest.raises(ConfigError, match="data.cache_decoded_mb"):
        load_config(None, ["data.cache_decoded_mb=-1"])
