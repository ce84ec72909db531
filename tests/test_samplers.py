"""Temporal samplers against the published formulas: worked examples, ranges, short videos."""
from __future__ import annotations

import numpy as np
import pytest

from tcpnet.data.samplers import DenseSampler, TSNTestSampler, TSNTrainSampler, TSNValSampler, build_sampler


def published_ten_clips(F: int, T: int) -> list:
    """The authors' --ten_clips_sample written out literally (k = 1..9, then 0)."""
    tick = F / float(T)
    out = []
    for k in list(range(1, 10)) + [0]:
        out += [int(tick / 10.0 * k + tick * x) for x in range(T)]
    return out


def test_ten_clips_worked_example():
    idx = TSNTestSampler(8, num_clips=10)(300)
    assert idx.dtype == np.int64 and idx.shape == (80,)
    assert idx[:8].tolist() == [3, 41, 78, 116, 153, 191, 228, 266]
    assert idx[-8:].tolist() == [0, 37, 75, 112, 150, 187, 225, 262]
    # clip k=5 sits half a segment in: int(18.75 + 37.5 x)
    assert idx[4 * 8:5 * 8].tolist() == [18, 56, 93, 131, 168, 206, 243, 281]


@pytest.mark.parametrize("F", [1, 5, 8, 9, 17, 64, 250, 300, 301, 1000])
@pytest.mark.parametrize("T", [8, 16])
def test_ten_clips_equals_published_rule(F, T):
    assert TSNTestSampler(T, num_clips=10)(F).tolist() == published_ten_clips(F, T)


def test_test_sampler_one_clip_is_centres_and_n_clips_order():
    assert TSNTestSampler(8)(300).tolist() == [18, 56, 93, 131, 168, 206, 243, 281]
    # N = 3: k = 1, 2, then 0, offsets tick*k/3 (tick = 37.5 -> 12.5, 25)
    idx = TSNTestSampler(8, num_clips=3)(300).reshape(3, 8)
    assert idx[0].tolist() == [int(12.5 + 37.5 * x) for x in range(8)]
    assert idx[1].tolist() == [int(25.0 + 37.5 * x) for x in range(8)]
    assert idx[2].tolist() == [int(37.5 * x) for x in range(8)]


def test_twice_sample_is_tsm_definition():
    idx = TSNTestSampler(8, num_clips=2)(300)
    assert idx.tolist() == [18, 56, 93, 131, 168, 206, 243, 281] + [0, 37, 75, 112, 150, 187, 225, 262]


def test_test_sampler_short_video_repeats_frames_as_published():
    # F=5 < T=8, tick = 0.625, no guard: int(0.625 x) for the k=0 clip
    idx = TSNTestSampler(8, num_clips=10)(5)
    assert idx[-8:].tolist() == [0, 0, 1, 1, 2, 3, 3, 4]
    assert idx.max() < 5


def test_val_centres_and_published_guard():
    s = TSNValSampler(8)
    assert s(300).tolist() == [18, 56, 93, 131, 168, 206, 243, 281]
    assert s(9).tolist() == [int(9 / 8 / 2 + 9 / 8 * x) for x in range(8)]
    assert s(8).tolist() == [0] * 8  # F == T falls under the published guard
    assert s(3).tolist() == [0] * 8
    fixed = TSNValSampler(8, fix_equal=True)
    assert fixed(8).tolist() == list(range(8))
    assert fixed(3).tolist() == [0] * 8
    assert fixed(300).tolist() == s(300).tolist()


def test_train_offsets_stay_in_their_segments():
    s = TSNTrainSampler(8)
    F, avg = 300, 37
    seen = np.zeros((8, avg), dtype=bool)
    for seed in range(500):
        idx = s(F, np.random.default_rng(seed))
        assert idx.dtype == np.int64 and idx.shape == (8,)
        seg = np.arange(8) * avg
        assert np.all(idx >= seg) and np.all(idx < seg + avg)
        seen[np.arange(8), idx - seg] = True
    # 500 draws per segment from 37 values: every offset 0..36 appears (miss prob ~ 37*e^-13.5)
    assert seen.all()


def test_train_is_reproducible_with_generator():
    s = TSNTrainSampler(8)
    a = s(300, np.random.default_rng(7))
    b = s(300, np.random.default_rng(7))
    assert a.tolist() == b.tolist()


def test_train_short_videos():
    s = TSNTrainSampler(8)
    rng = np.random.default_rng(0)
    assert s(5, rng).tolist() == [0] * 8  # F < T: frame 1 repeated, as published
    assert s(8, rng).tolist() == list(range(8))  # avg = 1
    idx = s(17, rng)  # avg = 2: frames 0-1, 2-3, ..., 14-15; frame 16 never used
    assert np.all(idx // 2 == np.arange(8))
    with pytest.raises(ValueError, match="num_frames"):
        s(0, rng)


def test_dense_test_starts_and_wrap():
    s = DenseSampler(8, train=False)
    idx = s(300).reshape(10, 8)
    starts = [0, 26, 52, 78, 104, 131, 157, 183, 209, 236]  # linspace(0, 236, 10) truncated
    assert idx[:, 0].tolist() == starts
    assert np.all(np.diff(idx, axis=1) == 8)  # t_stride = 64 // 8
    short = s(40).reshape(10, 8)  # sample_pos = 1: all starts 0, indices mod F
    assert np.all(short == [0, 8, 16, 24, 32, 0, 8, 16])


def test_dense_train_exclusive_bound_quirk():
    F = 66  # sample_pos = 3: published draws randint(0, 2) -> starts 0 or 1, never 2
    s = DenseSampler(8, train=True)
    starts = {int(s(F, np.random.default_rng(i))[0]) for i in range(200)}
    assert starts == {0, 1}
    fixed = DenseSampler(8, train=True, exclusive_bound=False)
    assert {int(fixed(F, np.random.default_rng(i))[0]) for i in range(200)} == {0, 1, 2}
    idx = s(300, np.random.default_rng(3))
    assert idx.shape == (8,) and np.all(np.diff(idx) == 8) and 0 <= idx[0] <= 235


def test_build_sampler():
    assert isinstance(build_sampler("train", 8), TSNTrainSampler)
    assert isinstance(build_sampler("val", 8), TSNValSampler)
    s = build_sampler("test", 8, num_clips=10)
    assert isinstance(s, TSNTestSampler) and s.num_clips == 10
    d = build_sampler("test", 8, num_clips=10, dense=True)
    assert isinstance(d, DenseSampler) and not d.train and d.num_clips == 10
    with pytest.raises(ValueError, match="mode"):
        build_sampler("eval", 8)
