"""The optional torchcodec reader (`load_clip(..., reader="torchcodec")`): the same frames as the
PyAV reader (bit-identical: both decode with FFmpeg and convert with swscale's default bilinear
YUV->RGB), DecodeError naming the file on unreadable input. Skipped, with the reason, where
torchcodec does not import (not installed, or no system FFmpeg libraries)."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from tcpnet.data import load_clip
from tcpnet.data.readers import torchcodec as torchcodec_reader
from tcpnet.data.readers import pyav as video_mod
from tcpnet.data.errors import DecodeError, FrameIndexError
from videos import make_frames, write_cut, write_open_gop, write_vfr, write_video

_WHY = torchcodec_reader.unavailable_reason()
if _WHY is not None:
    pytest.skip(f"torchcodec not importable: {_WHY}", allow_module_level=True)

# name -> writer. Those torchcodec numbers like decode-all (measured: torchcodec 0.13, FFmpeg 5.1).
AGREES = {
    "x264_gop16_b2.mp4": lambda p: write_video(p, make_frames(120, seed=1), gop=16, bframes=2),
    "x264_gop250_b2.mkv": lambda p: write_video(p, make_frames(90, seed=2), gop=250, bframes=2),
    "x264_odd_444.mp4": lambda p: write_video(p, make_frames(40, 128, 171, seed=3), gop=8, pix_fmt="yuv444p"),
    "vp9_gop16.webm": lambda p: write_video(p, make_frames(60, seed=4), codec="libvpx-vp9", gop=16),
    "vp9_odd.webm": lambda p: write_video(p, make_frames(30, 128, 171, seed=5), codec="libvpx-vp9", gop=8),
    "open_gop.mp4": lambda p: write_open_gop(p, make_frames(96, seed=6)),
    "vfr.mp4": lambda p: write_vfr(p, make_frames(80, seed=7)),
}
# Those it numbers otherwise (frames come back late): the reader notices and reads them with PyAV.
DIFFERS = {
    "neg_pts.mp4": lambda p: write_video(p, make_frames(60, seed=8), gop=8, bframes=2, start_pts=-5),
    "x264_gop8.ts": lambda p: write_video(p, make_frames(60, seed=9), gop=8, bframes=2),
    "cut.mp4": lambda p: write_cut(write_video(p.parent / "cut_source.mp4", make_frames(120, seed=10), gop=32),
                                   p, 45),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchcodec")
    out = {}
    for name, write in {**AGREES, **DIFFERS}.items():
        write(root / name)
        out[name] = root / name
    return out


def _index_sets(n, rng):
    avg = n // 8
    return [[0], [n - 1], list(range(n)), [n - 1, 0, n // 2, n // 2],
            (np.arange(8) * avg + rng.integers(0, avg, size=8)).tolist()]


@pytest.mark.parametrize("name", list(AGREES))
def test_equal_to_pyav(files, name):
    path = files[name]
    ref = load_clip(path, list(range(video_mod.get_index(path).num_frames)), reader="pyav").numpy()
    rng = np.random.default_rng(0)
    video_mod.counters.clear()
    for indices in _index_sets(len(ref), rng):
        for threads in (1, 0):
            clip = load_clip(path, indices, reader="torchcodec", threads=threads)
            assert clip.dtype == torch.uint8 and clip.shape == (len(indices),) + ref.shape[1:]
            np.testing.assert_array_equal(clip.numpy(), ref[indices], err_msg=f"{name} {indices}")
    assert video_mod.counters["torchcodec_fallbacks"] == 0  # torchcodec itself gave these frames
    assert video_mod.counters["torchcodec_reads"] == 2 * len(_index_sets(len(ref), rng))


@pytest.mark.parametrize("name", list(DIFFERS))
def test_files_torchcodec_numbers_otherwise_stay_exact(files, name):
    path = files[name]
    n = video_mod.get_index(path).num_frames
    ref = load_clip(path, list(range(n)), reader="pyav").numpy()
    indices = [n - 1, 0, n // 2, 3]
    np.testing.assert_array_equal(load_clip(path, indices, reader="torchcodec").numpy(), ref[indices])
    np.testing.assert_array_equal(load_clip(path, [1, 2], reader="torchcodec").numpy(), ref[[1, 2]])


def test_bad_files_raise_decode_error(tmp_path):
    normal = write_video(tmp_path / "normal.mp4", make_frames(30), gop=8)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(normal.read_bytes()[: normal.stat().st_size // 2])
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    audio = tmp_path / "audio.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
    for path, cause in {cut: "cannot open", text: "cannot open", empty: "empty file", audio: "no video stream",
                        tmp_path / "missing.mp4": "cannot stat"}.items():
        with pytest.raises(DecodeError, match=cause) as info:
            load_clip(path, [0], reader="torchcodec")
        assert info.value.path == str(path)
    with pytest.raises(FrameIndexError, match="out of range for a clip of 30 frames"):
        load_clip(normal, [30], reader="torchcodec")


def test_dataset_reader_seam(files):
    from tcpnet.data import ClipSpec, DecodeSpec, TSNTrainSampler, VideoDataset, VideoRecord

    records = [VideoRecord(str(files[name]), None, 0) for name in ("x264_gop16_b2.mp4", "vp9_gop16.webm")]
    kwargs = dict(clip=ClipSpec(TSNTrainSampler(4)), seed=0, return_uint8=True)
    ours = VideoDataset(records, decode=DecodeSpec(reader="torchcodec"), **kwargs)
    pyav = VideoDataset(records, **kwargs)
    for i in range(len(records)):
        assert torch.equal(ours[i][0], pyav[i][0])
    with pytest.raises(ValueError, match="reader must be one of"):
        VideoDataset(records, decode=DecodeSpec(reader="decord"), **kwargs)
