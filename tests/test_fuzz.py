"""Decoder fault containment: mutated files (bit flips, bursts of garbage, truncations, garbage
headers, zeroed and spliced spans) over mp4/mkv/webm/avi with H.264, VP9 and MPEG-4 end in valid
frames or in a DecodeError naming the file, within the deadline, in the main process and in
DataLoader workers; a read past its deadline is cut short with DecodeTimeout."""
import collections
import os
import re
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tcpnet.data import DecodeError, DecodeSpec, DecodeTimeout, VideoDataset, VideoRecord, load_clip, probe
from tcpnet.data.readers.pyav import clear_index_cache, read_video
from tcpnet.input_config import InputConfig
from videos import decode_all, make_frames, write_video

DEADLINE = 5.0  # seconds per item: every read here takes milliseconds unless something hangs
SLACK = 1.0  # one packet's decode and the clock checks around it
BASES = [("h264.mp4", "libx264"), ("h264.mkv", "libx264"), ("vp9.webm", "libvpx-vp9"),
         ("vp9.mkv", "libvpx-vp9"), ("mpeg4.avi", "mpeg4"), ("mpeg4.mp4", "mpeg4")]
MUTATIONS_PER_BASE = 55  # 6 x 55 = 330 files
INDICES = [0, 4, 9, 14, 19, 23]


def _mutate(data: bytes, rng: np.random.Generator) -> tuple:
    """One random corruption of a file's bytes: (kind, new bytes)."""
    b = bytearray(data)
    n = len(b)
    kind = ["bitflip", "burst", "truncate", "header", "zeros", "splice"][int(rng.integers(6))]
    if kind == "bitflip":
        for pos in rng.integers(0, n, size=int(rng.integers(1, 65))):
            b[pos] ^= 1 << int(rng.integers(8))
    elif kind == "burst":
        start = int(rng.integers(0, n))
        size = int(rng.integers(1, 257))
        b[start:start + size] = rng.integers(0, 256, size=min(size, n - start), dtype=np.uint8).tobytes()
    elif kind == "truncate":
        b = b[:int(rng.integers(1, n))]
    elif kind == "header":
        size = int(rng.integers(4, 513))
        b[:size] = rng.integers(0, 256, size=min(size, n), dtype=np.uint8).tobytes()
    elif kind == "zeros":
        start = int(rng.integers(0, n))
        b[start:start + int(rng.integers(1, 4097))] = bytes(min(4096, n - start))
        b = b[:n]
    else:  # splice: a chunk of the file copied over another place
        a, c = sorted(int(x) for x in rng.integers(0, n, size=2))
        size = int(rng.integers(16, 2049))
        b[c:c + size] = data[a:a + size]
        b = b[:max(n, c + size)]
    return kind, bytes(b)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """330 mutated files: [(path, base name, mutation kind)]."""
    root = tmp_path_factory.mktemp("fuzz")
    frames = make_frames(24, 48, 64, seed=3)
    rng = np.random.default_rng(2024)
    files = []
    for name, codec in BASES:
        base = write_video(root / f"base_{name}", frames, codec=codec, gop=8, bframes=2)
        data = base.read_bytes()
        stem, suffix = name.rsplit(".", 1)
        for i in range(MUTATIONS_PER_BASE):
            kind, mutated = _mutate(data, rng)
            path = root / f"{stem}_{i:02d}_{kind}.{suffix}"
            path.write_bytes(mutated)
            files.append((str(path), name, kind))
    return files


def _read(path: str):
    """("ok", clip) or ("error", DecodeError); anything else fails the test with the file named."""
    start = time.monotonic()
    try:
        clip = load_clip(path, INDICES, threads=1, timeout=DEADLINE)
        outcome = ("ok", clip)
    except DecodeError as err:
        assert err.path == os.path.abspath(path) or err.path == path, (path, err.path)
        assert path in str(err) or os.path.abspath(path) in str(err), str(err)
        outcome = ("error", err)
    except Exception:  # noqa: BLE001 - the point of the test: nothing else may escape
        pytest.fail(f"{path}: escaped as a non-DecodeError:\n{traceback.format_exc()}")
    took = time.monotonic() - start
    assert took <= DEADLINE + SLACK, (path, took)
    return outcome


def test_every_mutated_file_gives_frames_or_a_decode_error_naming_it(corpus):
    counts = collections.Counter()
    for path, base, kind in corpus:
        status, value = _read(path)
        counts[status] += 1
        counts[f"{status}:{kind}"] += 1
        if status == "ok":
            assert value.dtype == torch.uint8 and value.ndim == 4 and value.shape[0] == len(INDICES), (path, value.shape)
            assert value.shape[-1] == 3 and value.shape[1] > 0 and value.shape[2] > 0
        else:
            counts[f"error:{type(value).__name__}"] += 1
    print(f"\nfuzz, {len(corpus)} files: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    assert len(corpus) >= 300
    assert counts["ok"] > 0 and counts["error"] > 0  # both outcomes are exercised
    assert counts["ok"] + counts["error"] == len(corpus)


def test_mutated_files_through_a_dataset_and_two_workers(corpus):
    """Training-mode dataset: every bad file is replaced, counted and named; two worker processes
    survive every file, give the same clips as the main process and name the same bad files."""
    records = [VideoRecord(path, None, i % 4) for i, (path, _, _) in enumerate(corpus)]
    cfg = InputConfig(crop_size=32, scale_size=40, num_segments=4)

    def run(workers: int):
        dataset = VideoDataset.from_config(records, "", cfg, mode="val", seed=0, on_error="replace",
                                           max_consecutive_failures=100, return_uint8=True,
                                           decode=DecodeSpec(threads=1, timeout=DEADLINE))  # concealment depends on threads
        batches = []
        for clips, labels in DataLoader(dataset, batch_size=16, num_workers=workers, shuffle=False):
            assert clips.shape[1:] == (3, 4, 32, 32) and clips.dtype == torch.uint8
            batches.append((clips, labels))
        return batches, {item.path for item in dataset.bad_items()}

    start = time.monotonic()
    batches, bad = run(2)
    assert time.monotonic() - start < len(corpus) * DEADLINE  # nothing hung
    assert sum(len(labels) for _, labels in batches) == len(corpus)
    reference, reference_bad = run(0)
    assert 0 < len(bad) < len(corpus) and bad <= {os.path.abspath(path) for path, _, _ in corpus}
    # A file can fail in one process and not another only when its packet count and its decoded
    # frame count disagree (which of the two a process learnt first decides the sampled frames).
    for path in bad ^ reference_bad:
        assert _counts_disagree(path), path
    clips, ref = torch.cat([c for c, _ in batches]), torch.cat([c for c, _ in reference])
    paths = [os.path.abspath(path) for path, _, _ in corpus]
    for i, path in enumerate(paths):  # items whose own file loaded: the same clip in both processes
        if path not in bad | reference_bad:
            assert torch.equal(clips[i], ref[i]), path
    print(f"\nfuzz through a 2-worker DataLoader: {len(corpus)} items, {len(bad)} bad files replaced and named")


def _counts_disagree(path: str) -> bool:
    clear_index_cache()
    try:
        return probe(path).num_frames != len(decode_all(path))
    except Exception:  # noqa: BLE001 - a file the reference decoder cannot read at all
        return True


# ---------------------------------------------------------------------- the deadline itself

@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "long.mkv"
    return write_video(path, make_frames(240, 144, 192, seed=4), gop=240, bframes=0)


def test_a_read_past_its_deadline_is_cut_short_and_names_the_file(long_video):
    start = time.monotonic()
    full = read_video(long_video, [239], threads=1, strategy="sequential")
    baseline = time.monotonic() - start
    with pytest.raises(DecodeTimeout, match=rf"{long_video}: reading took longer than the 0\.02 s deadline "
                                             r"\(data\.decode_timeout\); stopped at frame \d+"):
        read_video(long_video, [239], threads=1, strategy="sequential", timeout=0.02)
    with pytest.raises(DecodeTimeout, match=r"stopped (at packet|indexing packet) \d+"):
        read_video(long_video, [239], threads=1, timeout=1e-9)
    with pytest.raises(DecodeTimeout, match=r"stopped at frame (\d+)") as err:
        read_video(long_video, [239], threads=1, strategy="sequential", timeout=baseline / 10)
    stopped = int(re.search(r"stopped at frame (\d+)", str(err.value)).group(1))
    assert stopped < 200  # near the deadline (about frame 24), not at the end of the video
    np.testing.assert_array_equal(read_video(long_video, [239], threads=1, strategy="sequential",
                                             timeout=60.0), full)  # a deadline never changes frames


def test_a_timed_out_video_is_a_bad_video_in_training_and_an_error_in_test(long_video, tmp_path):
    good = write_video(tmp_path / "good.mp4", make_frames(16, 48, 64))
    records = [VideoRecord(str(long_video), None, 0), VideoRecord(str(good), None, 1)]
    cfg = InputConfig(crop_size=32, scale_size=40, num_segments=4)
    train = VideoDataset.from_config(records, "", cfg, mode="val", seed=0, decode=DecodeSpec(timeout=1e-9),
                                     max_consecutive_failures=3, return_uint8=True)
    with pytest.raises(RuntimeError, match="3 consecutive videos failed"):
        train[0]
    bad = {b.path for b in train.bad_items()}
    assert str(long_video) in bad and bad <= {str(long_video), str(good)}
    test = VideoDataset.from_config(records, "", cfg, mode="test", decode=DecodeSpec(timeout=1e-9))
    with pytest.raises(DecodeTimeout, match=str(long_video)):
        test[0]
    ok = VideoDataset.from_config(records, "", cfg, mode="test", decode=DecodeSpec(timeout=30.0))
    assert ok[1][0].shape == (3, 4, 32, 32)


def test_the_deadline_covers_the_frame_count_probe(long_video):
    """A list without frame counts: counting the frames (the packet index) is inside the item's
    data.decode_timeout, not before it, and nothing is cached from a probe cut short."""
    clear_index_cache()
    with pytest.raises(DecodeTimeout, match=rf"{long_video}: reading took longer than the 1e-09 s deadline"):
        probe(long_video, timeout=1e-9)
    clear_index_cache()
    cfg = InputConfig(crop_size=32, scale_size=40, num_segments=4)
    ds = VideoDataset.from_config([VideoRecord(str(long_video), None, 0)], "", cfg, mode="test",
                                  decode=DecodeSpec(timeout=1e-9))
    with pytest.raises(DecodeTimeout, match=r"stopped (while opening the file|indexing packet \d+)"):
        ds[0]
    assert ds._num_frames_cache == {}  # the probe did not finish
    ok = VideoDataset.from_config([VideoRecord(str(long_video), None, 0)], "", cfg, mode="test",
                                  decode=DecodeSpec(timeout=30.0))
    assert ok[0][0].shape == (3, 4, 32, 32) and ok._num_frames_cache == {0: 240}


def test_decode_timeout_config_is_checked():
    from tcpnet.config import ConfigError, load_config
    assert load_config(None, ["data.train_list=a.txt"]).data.decode_timeout == 60.0
    assert load_config(None, ["data.train_list=a.txt", "data.decode_timeout=null"]).data.decode_timeout is None
    with pytest.raises(ConfigError, match="data.decode_timeout must be > 0"):
        load_config(None, ["data.train_list=a.txt", "data.decode_timeout=0"])


# ---------------------------------------------------------------------- display rotation

def _write_rotated(path: Path, frames: np.ndarray, degrees: int) -> Path:
    import av
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.set_display_rotation(degrees)
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.parametrize("degrees", [-90, 90, 180])
def test_frames_come_out_in_display_orientation(tmp_path, degrees):
    """A phone's display matrix is applied as players apply it: counter-clockwise quarter turns."""
    frames = make_frames(12, 48, 64, seed=5)
    plain = _write_rotated(tmp_path / "plain.mp4", frames, 0)  # the same encode, no display matrix
    rotated = _write_rotated(tmp_path / f"rot{degrees}.mp4", frames, degrees)
    coded = load_clip(plain, [0, 5, 11]).numpy()
    got = load_clip(rotated, [0, 5, 11]).numpy()
    np.testing.assert_array_equal(got, np.rot90(coded, degrees // 90, axes=(1, 2)))
    assert load_clip(rotated, []).shape[1:3] == got.shape[1:3]


def test_rotation_matches_torchcodec(tmp_path):
    pytest.importorskip("torchcodec.decoders", reason="torchcodec (optional) is not importable here")
    from torchcodec.decoders import VideoDecoder
    rotated = _write_rotated(tmp_path / "rot.mp4", make_frames(12, 48, 64, seed=6), -90)
    ours = load_clip(rotated, [0, 7]).numpy()
    theirs = VideoDecoder(str(rotated), seek_mode="exact", dimension_order="NHWC").get_frames_at([0, 7]).data.numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert load_clip(rotated, [], reader="torchcodec").shape[1:3] == ours.shape[1:3]
