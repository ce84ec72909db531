"""load_clip / probe on real video files written with PyAV and on JPEG frame folders.

The reference for every video is "decode every frame in order and index" (videos.decode_all);
load_clip must be bit-identical to it (no tolerance: same decoder, same RGB conversion).
"""
from __future__ import annotations

import pickle
import struct

import av
import numpy as np
import pytest
import torch
from PIL import Image

from tcpnet.data import DecodeError, VideoInfo, load_clip, probe
from tcpnet.data.readers import pyav as video_mod
from tcpnet.data.clip import FrameIndexError
from videos import decode_all, make_frames, write_frame_folder, write_video


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


# name -> (num_frames, height, width, write_video kwargs). Sizes/lengths kept small for speed.
VIDEOS = {
    "x264_gop250_b2.mp4": (120, 48, 64, dict(gop=250, bframes=2)),
    "x264_gop16_b2.mp4": (120, 48, 64, dict(gop=16, bframes=2)),
    "x264_gop16_b0.mkv": (90, 48, 64, dict(gop=16, bframes=0)),
    "x264_gop8.ts": (60, 48, 64, dict(gop=8, bframes=2)),  # MPEG-TS: inexact (dts, byte) seeking
    "x264_no_pts.h264": (50, 48, 64, dict(gop=10, bframes=0)),  # raw Annex B: packets have no pts
    "x264_neg_pts.mp4": (60, 48, 64, dict(gop=8, bframes=2, start_pts=-5)),  # edit list, discarded frames
    "x264_odd_444.mp4": (40, 128, 171, dict(gop=8, bframes=2, pix_fmt="yuv444p")),  # odd size: 4:4:4
    "vp9_gop16.webm": (60, 48, 64, dict(codec="libvpx-vp9", gop=16)),
    "vp9_odd.webm": (30, 128, 171, dict(codec="libvpx-vp9", gop=8)),  # VP9 allows odd 4:2:0 sizes
    "mpeg4_gop12.avi": (60, 48, 64, dict(codec="mpeg4", gop=12, bframes=2)),
    "one_frame.mp4": (1, 48, 64, dict(gop=16)),
}
# The mp4 muxer turns negative start timestamps into an edit list; FFmpeg then drops (marks
# "discard") the 5 frames before time 0, so decode-all shows 55 frames. load_clip follows.
DISPLAYED = {"x264_neg_pts.mp4": 55}
if _has_encoder("libsvtav1"):
    VIDEOS["av1_gop16.mkv"] = (48, 64, 64, dict(codec="libsvtav1", gop=16))


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for seed, (name, (num_frames, height, width, kwargs)) in enumerate(VIDEOS.items()):
        write_video(root / name, make_frames(num_frames, height, width, seed=seed), **kwargs)
    return root


@pytest.fixture(scope="module")
def reference(video_dir):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = decode_all(video_dir / name)
        return cache[name]

    return get


def _index_sets(num_frames: int, rng: np.random.Generator):
    last = num_frames - 1
    sets = [
        [0], [last], [0, last], [last, 0],
        list(range(num_frames)),  # dense: every frame
        sorted(rng.choice(num_frames, size=min(8, num_frames), replace=False).tolist()),  # sparse sorted
        rng.integers(0, num_frames, size=12).tolist(),  # unsorted with repeats
        [last // 2] * 3 + [0, last, last // 2],  # repeats
    ]
    if num_frames > 8:  # TSN-like: one random frame per segment
        avg = num_frames // 8
        sets.append((np.arange(8) * avg + rng.integers(0, avg, size=8)).tolist())
        sets.append(list(range(last - 5, last + 1)) + list(range(0, 5)))  # dense runs at both ends
    return sets


@pytest.mark.parametrize("name", list(VIDEOS))
def test_load_clip_equals_decode_all(video_dir, reference, name):
    ref = reference(name)
    _, height, width, _ = VIDEOS[name]
    num_frames = DISPLAYED.get(name, VIDEOS[name][0])
    assert ref.shape == (num_frames, height, width, 3), "the encoder did not keep every frame"
    assert len({f.tobytes() for f in ref}) == num_frames, "test frames must be content-distinct"
    rng = np.random.default_rng(0)
    path = video_dir / name
    video_mod.counters.clear()
    for indices in _index_sets(num_frames, rng):
        clip = load_clip(path, indices)
        assert clip.dtype == torch.uint8 and clip.shape == (len(indices), height, width, 3)
        np.testing.assert_array_equal(clip.numpy(), ref[indices], err_msg=f"{name} {indices}")
        # the forced plans (used by the benchmark) must be exact too, single- or multi-threaded
        for strategy, threads in (("seek", 1), ("forward", 0), ("sequential", 1)):
            got = video_mod.read_video(path, np.asarray(indices), strategy=strategy, threads=threads)
            np.testing.assert_array_equal(got, ref[indices], err_msg=f"{name} {strategy} {indices}")
    assert video_mod.counters["fallbacks"] == 0  # exact without decoding from the start


@pytest.mark.parametrize("name", list(VIDEOS))
def test_seek_path_equals_decode_all(video_dir, reference, name, monkeypatch):
    """Files too large to hold in memory are decoded with demuxer seeks: the same frames."""
    monkeypatch.setattr(video_mod, "IN_MEMORY_MAX_BYTES", 0)
    ref = reference(name)
    rng = np.random.default_rng(1)
    for indices in _index_sets(len(ref), rng):
        for strategy, threads in (("auto", 1), ("seek", 0)):
            video_mod.clear_index_cache()
            got = video_mod.read_video(video_dir / name, np.asarray(indices), strategy=strategy, threads=threads)
            np.testing.assert_array_equal(got, ref[indices], err_msg=f"{name} {strategy} {indices}")


@pytest.mark.parametrize("name", list(VIDEOS))
def test_probe_counts_frames(video_dir, reference, name):
    info = probe(video_dir / name)
    _, height, width, _ = VIDEOS[name]
    num_frames = DISPLAYED.get(name, VIDEOS[name][0])
    assert isinstance(info, VideoInfo)
    assert info.num_frames == len(reference(name)) == num_frames
    assert (info.width, info.height) == (width, height)
    assert info.keyframes[0] == 0 or name == "x264_neg_pts.mp4"  # first GOP's keyframe discarded there
    assert info.fps == pytest.approx(25.0)
    if info.duration is not None and num_frames > 1:
        assert info.duration == pytest.approx(num_frames / 25.0, abs=0.25)


def test_probe_keyframes_and_codec(video_dir):
    info = probe(video_dir / "x264_gop16_b2.mp4")
    assert info.keyframes == tuple(range(0, 120, 16))  # keyint=16, scenecut=0
    assert info.codec == "h264"
    assert probe(video_dir / "x264_gop250_b2.mp4").keyframes == (0,)
    assert probe(video_dir / "vp9_gop16.webm").codec == "vp9"


def test_index_types_and_empty(video_dir, reference):
    path = video_dir / "x264_gop16_b2.mp4"
    ref = reference("x264_gop16_b2.mp4")
    want = ref[[3, 40, 7]]
    for indices in ([3, 40, 7], np.array([3, 40, 7], dtype=np.int32), torch.tensor([3, 40, 7])):
        np.testing.assert_array_equal(load_clip(path, indices).numpy(), want)
    np.testing.assert_array_equal(load_clip(str(path), 5).numpy(), ref[[5]])
    assert load_clip(path, []).shape == (0, 48, 64, 3)
    with pytest.raises(TypeError, match="integers"):
        load_clip(path, [1.5])
    with pytest.raises(ValueError, match="1-D"):
        load_clip(path, [[1, 2]])


def test_out_of_range_and_negative_indices(video_dir):
    path = video_dir / "x264_gop16_b2.mp4"
    with pytest.raises(FrameIndexError, match=r"frame index 120 is out of range for a clip of 120 frames") as info:
        load_clip(path, [0, 120])
    assert isinstance(info.value, IndexError) and isinstance(info.value, DecodeError)
    assert info.value.path == str(path) and info.value.num_frames == 120
    with pytest.raises(FrameIndexError, match="-1 is negative"):
        load_clip(path, [3, -1])
    # a file without pts (counted by decoding) reports the exact count as well
    with pytest.raises(FrameIndexError, match="out of range for a clip of 50 frames"):
        load_clip(video_dir / "x264_no_pts.h264", [55])


def _truncate(src, dst, fraction=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_bad_files_raise_decode_error(video_dir, tmp_path):
    frames = make_frames(60)
    normal = write_video(tmp_path / "normal.mp4", frames, gop=16)  # moov atom at the end
    faststart = write_video(tmp_path / "faststart.mp4", frames, gop=16, container_options={"movflags": "faststart"})
    avi = write_video(tmp_path / "normal.avi", frames, codec="mpeg4", gop=12)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    audio_only = tmp_path / "audio.wav"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
    cases = {
        _truncate(normal, tmp_path / "cut.mp4"): "cannot open",
        _truncate(faststart, tmp_path / "cut_faststart.mp4"): "truncated or corrupt",
        _truncate(avi, tmp_path / "cut.avi"): "truncated or corrupt",
        text: "cannot open",
        empty: "empty file",
        audio_only: "no video stream",
        tmp_path / "missing.mp4": "cannot stat",
    }
    for path, cause in cases.items():
        for call in (lambda: load_clip(path, [0]), lambda: probe(path)):
            with pytest.raises(DecodeError, match=cause) as info:
                call()
            assert str(path) in str(info.value) and info.value.path == str(path)
            assert isinstance(info.value, RuntimeError)


def test_decode_error_pickles_and_keeps_type_through_dataloader_reraise(tmp_path):
    err = DecodeError(tmp_path / "a.mp4", "cannot open")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is DecodeError and again.path == err.path and str(again) == str(err)
    idx_err = pickle.loads(pickle.dumps(FrameIndexError("a.mp4", 9, 5)))
    assert (idx_err.index, idx_err.num_frames) == (9, 5)
    assert isinstance(DecodeError("worker message"), DecodeError)  # torch re-raises as type(msg)


def test_wrong_container_frame_count_is_ignored(tmp_path, reference, video_dir):
    """AVI header frame count patched to lie (999): counts and reads still follow the packets."""
    path = tmp_path / "lying.avi"
    path.write_bytes((video_dir / "mpeg4_gop12.avi").read_bytes())
    data = bytearray(path.read_bytes())
    strh = data.index(b"strh")
    struct.pack_into("<I", data, strh + 8 + 32, 999)  # AVIStreamHeader.dwLength
    path.write_bytes(bytes(data))
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 999  # FFmpeg believes the header
    assert probe(path).num_frames == 60
    ref = reference("mpeg4_gop12.avi")
    np.testing.assert_array_equal(load_clip(path, [59, 0, 30]).numpy(), ref[[59, 0, 30]])
    with pytest.raises(FrameIndexError, match="60 frames"):
        load_clip(path, [60])


def test_index_disagreement_falls_back_to_counting(video_dir, reference):
    """If decoded frames do not match the packet index, the reader decodes from the start."""
    path = video_dir / "x264_gop16_b2.mp4"
    ref = reference("x264_gop16_b2.mp4")
    video_mod.clear_index_cache()
    try:
        index = video_mod.get_index(path)
        del index.pts_to_index[int(index.pts[37])]  # pretend frame 37's pts is unknown
        video_mod.counters.clear()
        np.testing.assert_array_equal(load_clip(path, [50, 2, 40]).numpy(), ref[[50, 2, 40]])
        assert not index.reliable  # the file is now read by counting
        assert video_mod.counters["fallbacks"] == 1
        np.testing.assert_array_equal(load_clip(path, [119, 33]).numpy(), ref[[119, 33]])
        assert probe(path).num_frames == 120
    finally:
        video_mod.clear_index_cache()


def test_index_cache_follows_file_changes(tmp_path):
    path = tmp_path / "changing.mp4"
    write_video(path, make_frames(30, seed=1), gop=8)
    assert probe(path).num_frames == 30
    write_video(path, make_frames(45, seed=2), gop=8)
    assert probe(path).num_frames == 45
    np.testing.assert_array_equal(load_clip(path, [44]).numpy(), decode_all(path)[[44]])


def _decode_order_pts(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [p.pts for p in container.demux(stream) if p.size and not p.is_discard]


def test_restart_plan_decodes_less(video_dir, monkeypatch):
    """With short GOPs, far-apart frames are reached by restarting the decoder at their keyframe;
    when the next keyframe is right where the decoder is, or with one GOP, it goes on."""
    starts = []
    original = video_mod._MemorySource.start
    monkeypatch.setattr(video_mod._MemorySource, "start", lambda self, key: (starts.append(key), original(self, key))[1])
    load_clip(video_dir / "x264_gop16_b2.mp4", [5, 60, 110])
    assert starts == [0, 3, 6]  # keyframes 0, 48 and 96
    starts.clear()
    load_clip(video_dir / "x264_gop16_b2.mp4", [15, 20])  # frame 15 ends the first GOP: go on to 20
    assert starts == [0]
    starts.clear()
    load_clip(video_dir / "x264_gop250_b2.mp4", [5, 60, 110])
    assert starts == [0]


def test_decodes_only_what_is_needed(video_dir):
    """Packets sent to the decoder: from the keyframe of each run up to its last wanted frame's
    packet, nothing after (the decoder is drained instead); the file is opened once, also cold.
    Frames decoded: those packets less the non-reference pictures the decoder was told to skip."""
    counters = video_mod.counters
    for name, indices, starts, seeks in [
        ("x264_gop250_b2.mp4", [5], [0], 0),  # one GOP: decode 0..5 and stop
        ("x264_gop250_b2.mp4", [100, 3], [0], 0),
        ("x264_gop16_b2.mp4", [100], [96], 1),  # start at keyframe 96
        ("x264_gop16_b2.mp4", [5, 60, 110], [0, 48, 96], 2),
    ]:
        order = _decode_order_pts(video_dir / name)  # no discarded packets in these files
        position = {pts: j for j, pts in enumerate(order)}
        rank = {pts: i for i, pts in enumerate(sorted(order))}
        frame_at = [rank[pts] for pts in order]  # frame index of the packet at each decode position
        runs = {}  # keyframe -> last decode position needed
        for w in sorted(indices):
            key = max(s for s in starts if s <= w)
            runs[key] = max(runs.get(key, 0), position[sorted(order)[w]])
        packets = sum(last - frame_at.index(key) + 1 for key, last in runs.items())
        for threads in (1, 0):
            video_mod.clear_index_cache()
            counters.clear()
            load_clip(video_dir / name, indices, threads=threads)
            assert counters["packets"] == packets, (name, indices)
            assert counters["frames"] == packets - counters["skipped"], (name, indices)
            assert (counters["seeks"], counters["opens"], counters["fallbacks"]) == (seeks, 1, 0), (name, indices)


# ---------------------------------------------------------------- frame folders


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames") / "video_a"
    write_frame_folder(folder, make_frames(20, 48, 64, seed=5))
    return folder


def _pil_frames(folder, template, count):
    return np.stack([np.asarray(Image.open(folder / template.format(i)).convert("RGB"))
                     for i in range(1, count + 1)])


def test_frame_folder_equals_pil(frame_folder):
    ref = _pil_frames(frame_folder, "img_{:05d}.jpg", 20)
    for indices in ([0], [19], [19, 0, 7, 7], list(range(20))):
        clip = load_clip(frame_folder, indices)
        assert clip.dtype == torch.uint8
        np.testing.assert_array_equal(clip.numpy(), ref[indices])
    assert load_clip(frame_folder, []).shape == (0, 48, 64, 3)
    info = probe(frame_folder)
    assert (info.num_frames, info.width, info.height, info.codec) == (20, 64, 48, "jpeg")


def test_frame_folder_custom_template(tmp_path):
    folder = write_frame_folder(tmp_path / "sth", make_frames(6, seed=3), template="{:05d}.jpg")
    ref = _pil_frames(folder, "{:05d}.jpg", 6)
    np.testing.assert_array_equal(load_clip(folder, [5, 1], frame_template="{:05d}.jpg").numpy(), ref[[5, 1]])
    assert probe(folder, frame_template="{:05d}.jpg").num_frames == 6
    with pytest.raises(DecodeError, match=r"frame 1 not found: .*img_00001\.jpg \(data\.frame_template='img_\{:05d\}\.jpg'\)"):
        load_clip(folder, [0])  # default template: no such files


def test_frame_folder_missing_and_bad_frames(tmp_path):
    folder = write_frame_folder(tmp_path / "gappy", make_frames(10, seed=4), skip=[5])
    with pytest.raises(DecodeError, match="img_00005.jpg") as info:
        load_clip(folder, [0, 4])  # index 4 is file 5: never replaced by frame 1
    assert info.value.path.endswith("img_00005.jpg")
    with pytest.raises(FrameIndexError, match="frame index 10 is out of range for a clip of 10 frames"):
        load_clip(folder, [10])  # past the last file (10): an index error, the hole at 5 aside
    with pytest.raises(FrameIndexError, match="negative"):
        load_clip(folder, [-2])
    (folder / "img_00003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DecodeError, match="img_00003.jpg.*cannot read frame image"):
        load_clip(folder, [2])
    with pytest.raises(DecodeError, match=r"frame 1 not found: .*img_00001\.jpg \(data\.frame_template="):
        probe(tmp_path)
