"""Dataset tools on tiny real videos: frame extraction, re-encoding, list files, Mini-K200, scanning."""
from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from videos import decode_all, make_frames, write_video

from tcpnet.data.list_parsers import read_frame_list
from tcpnet.data.clip import load_clip
from tcpnet.tools.prepare import (
    build_list,
    extract_frames,
    kinetics_ytid,
    make_mini_kinetics200,
    reencode_videos,
    scan_videos,
)

H, W, T = 48, 64, 12


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory) -> Path:
    """<root>/{abseiling, "air drumming"}/{v0,v1}.mp4: 12 frames of 64x48, one keyframe each."""
    root = tmp_path_factory.mktemp("videos")
    for c, name in enumerate(["abseiling", "air drumming"]):
        for v in range(2):
            (root / name).mkdir(exist_ok=True)
            write_video(root / name / f"v{v}.mp4", make_frames(T, H, W, seed=10 * c + v), fps=25, gop=250)
    return root


def _corrupt_copy(tree: Path, dst: Path) -> Path:
    shutil.copytree(tree, dst)
    (dst / "abseiling" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    good = (dst / "abseiling" / "v0.mp4").read_bytes()
    (dst / "abseiling" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    return dst


def test_extract_frames(video_tree, tmp_path):
    src = _corrupt_copy(video_tree, tmp_path / "src")
    out = tmp_path / "frames"
    s = extract_frames(src, out, workers=1, progress=False)
    assert (s.done, s.skipped, s.failed) == (4, 0, 2)
    assert sorted(Path(p).name for p, _ in s.failed_paths) == ["broken.mp4", "truncated.mp4"]
    assert s.extra["frames"] == 4 * T
    # spaces in class names become '_'; 1-based 5-digit names; shorter side 256 (upscaled from 48)
    folders = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*"))
    assert folders == ["abseiling/v0", "abseiling/v1", "air_drumming/v0", "air_drumming/v1"]
    files = sorted(p.name for p in (out / "abseiling" / "v0").iterdir())
    assert files == [f"img_{i:05d}.jpg" for i in range(1, T + 1)]
    with Image.open(out / "abseiling" / "v0" / "img_00001.jpg") as im:
        assert im.size == (round(W * 256 / H), 256) == (341, 256)
    # frame i (1-based) is the i-th decoded frame: downscaled back it matches the source decode
    # (JPEG q95 + bicubic up/down on a sharp test pattern: > 22 dB; a wrong frame scores < 15 dB).
    ref = decode_all(video_tree / "abseiling" / "v0.mp4")
    for i in (1, 6, T):
        with Image.open(out / "abseiling" / "v0" / f"img_{i:05d}.jpg") as im:
            small = np.asarray(im.resize((W, H), Image.BICUBIC), dtype=np.float64)
        mse = lambda j: np.mean((small - ref[j - 1]) ** 2)  # noqa: E731
        assert 10 * np.log10(255**2 / mse(i)) > 22
        assert mse(i) < min(mse(j) for j in range(1, T + 1) if j != i)
    # the project's reader reads the folders
    assert load_clip(out / "abseiling" / "v1", [0, T - 1]).shape == (2, 256, 341, 3)
    # a second run skips what exists
    s2 = extract_frames(src, out, workers=1, progress=False)
    assert (s2.done, s2.skipped, s2.failed) == (0, 4, 2)
    assert not list(out.rglob("*.part"))


def test_extract_frames_in_two_processes(video_tree, tmp_path):
    s = extract_frames(video_tree, tmp_path / "f", short_side=64, workers=2, progress=False)
    assert (s.done, s.failed) == (4, 0)
    with Image.open(tmp_path / "f" / "air_drumming" / "v1" / "img_00012.jpg") as im:
        assert im.size == (85, 64)


def test_frames_named_with_the_video_id(video_tree, tmp_path):
    """Charades' layout <id>/<id>-000001.jpg: extracted, listed and read with one template."""
    template = "{id}-{:06d}.jpg"
    s = extract_frames(video_tree, tmp_path / "f", short_side=32, template=template, workers=1, progress=False)
    assert (s.done, s.failed) == (4, 0)
    assert sorted(p.name for p in (tmp_path / "f" / "abseiling" / "v1").iterdir())[:2] == [
        "v1-000001.jpg", "v1-000002.jpg"]
    s = build_list(tmp_path / "f", tmp_path / "list.txt", kind="frames", template=template, progress=False)
    assert (s.done, s.failed) == (4, 0) and (tmp_path / "list.txt").read_text().splitlines()[1] == "abseiling/v1 12 0"
    assert load_clip(tmp_path / "f" / "abseiling" / "v1", [0, T - 1], frame_template=template).shape == (2, 32, 43, 3)
    with pytest.raises(ValueError, match=r"data.frame_template='\{name\}-\{\}.jpg': expected one"):
        extract_frames(video_tree, tmp_path / "g", template="{name}-{}.jpg", progress=False)


def test_build_list_frames_and_videos(video_tree, tmp_path):
    frames = tmp_path / "frames"
    extract_frames(video_tree, frames, short_side=32, workers=1, progress=False)
    # frames: sorted class names -> labels; classes.txt written beside the list
    s = build_list(frames, tmp_path / "lists" / "train.txt", kind="frames", progress=False)
    assert (s.done, s.failed) == (4, 0)
    assert (tmp_path / "lists" / "train.txt").read_text().splitlines() == [
        "abseiling/v0 12 0", "abseiling/v1 12 0", "air_drumming/v0 12 1", "air_drumming/v1 12 1"]
    assert (tmp_path / "lists" / "classes.txt").read_text() == "abseiling\nair_drumming\n"
    recs = read_frame_list(tmp_path / "lists" / "train.txt")
    assert [(r.path, r.num_frames, r.label) for r in recs][0] == ("abseiling/v0", 12, 0)
    # a label file fixes the ids (names with spaces match folders with '_')
    labels = tmp_path / "labels.txt"
    labels.write_text("zumba\nair drumming\nabseiling\n")
    s = build_list(frames, tmp_path / "val.txt", kind="frames", label_file=labels, progress=False)
    assert [ln.split()[2] for ln in (tmp_path / "val.txt").read_text().splitlines()] == ["2", "2", "1", "1"]
    # a gap in the frame numbers is reported, not listed
    (frames / "abseiling" / "v1" / "img_00005.jpg").unlink()
    s = build_list(frames, tmp_path / "gap.txt", kind="frames", class_file=tmp_path / "c.txt", progress=False)
    assert s.failed == 1 and "consecutive" in s.failed_paths[0][1] and s.done == 3
    # folders missing from the label file are an error naming them
    labels.write_text("abseiling\n")
    with pytest.raises(ValueError, match="air_drumming"):
        build_list(frames, tmp_path / "x.txt", kind="frames", label_file=labels, progress=False)

    # videos: exact frame counts; a path with a space is reported unless allowed
    s = build_list(video_tree, tmp_path / "v.txt", kind="video", class_file=tmp_path / "vc.txt", progress=False)
    assert (s.done, s.failed) == (2, 2) and "whitespace" in s.failed_paths[0][1]
    s = build_list(video_tree, tmp_path / "v.txt", kind="video", class_file=tmp_path / "vc.txt",
                   allow_whitespace=True, progress=False)
    assert (tmp_path / "v.txt").read_text().splitlines() == [
        "abseiling/v0.mp4 12 0", "abseiling/v1.mp4 12 0", "air drumming/v0.mp4 12 1", "air drumming/v1.mp4 12 1"]
    assert [r.path for r in read_frame_list(tmp_path / "v.txt")][2] == "air drumming/v0.mp4"
    # a different class set must not silently overwrite an existing class file
    with pytest.raises(ValueError, match="label_file"):
        build_list(frames, tmp_path / "y.txt", kind="frames", class_file=tmp_path / "vc.txt", progress=False)


def test_make_mini_kinetics200(tmp_path):
    ids = ["abcdefghijk", "A-b_c-d_e-f", "0123456789_", "zzzzzzzzzzz"]
    k400 = tmp_path / "k400_train.txt"
    k400.write_text(
        f"abseiling/{ids[0]}_000010_000020 300 0\n"
        f"air_drumming/{ids[1]}_000001_000011 250 1\n"
        f"archery/{ids[2]}_000100_000110.mp4 240 5\n"  # ytid ending in '_', video-list style path
        f"zumba/{ids[3]}_000000_000010 300 399\n"
        f"bowling/notinlist12_000000_000010 300 30\n"
    )
    ytids = tmp_path / "train_ytid_list.txt"
    ytids.write_text("\n".join(ids + ["missingid01"]) + "\n")
    s = make_mini_kinetics200(k400, ytids, tmp_path / "train_K200.txt", tmp_path / "map.txt",
                              k400_classes=_k400_names(tmp_path), classes_out=tmp_path / "k200.txt")
    assert (s.done, s.skipped) == (4, 1)
    assert s.extra["missing_ids"] == ["missingid01"] and s.failed == 1
    # labels: kept K400 labels in ascending order -> 0..N-1 (keeps K400's alphabetical order)
    assert (tmp_path / "train_K200.txt").read_text().splitlines() == [
        f"abseiling/{ids[0]}_000010_000020 300 0", f"air_drumming/{ids[1]}_000001_000011 250 1",
        f"archery/{ids[2]}_000100_000110.mp4 240 2", f"zumba/{ids[3]}_000000_000010 300 3"]
    assert (tmp_path / "map.txt").read_text() == "0 0\n1 1\n5 2\n399 3\n"
    assert (tmp_path / "k200.txt").read_text().splitlines() == ["c0", "c1", "c5", "c399"]
    # val: reuse the train mapping so both splits agree even if a class is absent
    val = tmp_path / "k400_val.txt"
    val.write_text(f"zumba/{ids[3]}_000020_000030 300 399\n")
    make_mini_kinetics200(val, ytids, tmp_path / "val_K200.txt", class_map_in=tmp_path / "map.txt")
    assert (tmp_path / "val_K200.txt").read_text() == f"zumba/{ids[3]}_000020_000030 300 3\n"
    bad = tmp_path / "bad.txt"
    bad.write_text("a/abcdefghijk_000000_000010 300\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 'path num_frames label', got 2 fields"):
        make_mini_kinetics200(bad, ytids, tmp_path / "o.txt")
    assert kinetics_ytid("x/--a_b-c_d-e_000012_000022.mp4") == "--a_b-c_d-e"


def _k400_names(tmp_path: Path) -> Path:
    p = tmp_path / "k400_classes.txt"
    p.write_text("".join(f"c{i}\n" for i in range(400)))
    return p


def test_scan_videos_finds_corrupt_files(video_tree, tmp_path):
    src = _corrupt_copy(video_tree, tmp_path / "src")
    for full in (False, True):
        bad = scan_videos(src, full_decode=full, progress=False)
        assert sorted(Path(p).name for p, _ in bad) == ["broken.mp4", "truncated.mp4"]
        assert all(err for _, err in bad)
    assert scan_videos(video_tree, progress=False) == []


def test_scan_names_every_path_that_looks_like_a_video(video_tree, tmp_path):
    """MPEG-TS files are scanned; a dangling symbolic link, a link loop, a FIFO and a directory named
    like a video are each reported as what they are (a FIFO is never opened, so it cannot block), and
    a FIFO is not an "empty file"."""
    import os

    root = tmp_path / "src"
    shutil.copytree(video_tree, root)
    write_video(root / "abseiling" / "stream.ts", make_frames(T, H, W, seed=5), codec="libx264", gop=4)
    (root / "abseiling" / "cut.ts").write_bytes((root / "abseiling" / "stream.ts").read_bytes()[:400])
    os.symlink(root / "gone.mp4", root / "abseiling" / "dangling.mp4")
    os.symlink("loop.mp4", root / "abseiling" / "loop.mp4")
    os.mkfifo(root / "abseiling" / "pipe.mp4")
    (root / "abseiling" / "folder.mp4").mkdir()
    os.symlink(root / "abseiling" / "v0.mp4", root / "abseiling" / "link.mp4")  # a link to a video: a video
    bad = dict((Path(p).name, why) for p, why in scan_videos(root, progress=False))
    assert sorted(bad) == ["cut.ts", "dangling.mp4", "folder.mp4", "loop.mp4", "pipe.mp4"]
    assert bad["dangling.mp4"] == f"DecodeError: cannot stat: a dangling symbolic link (to {root / 'gone.mp4'})"
    assert bad["loop.mp4"] == "DecodeError: cannot stat: a symbolic link loop"
    assert bad["pipe.mp4"] == "DecodeError: not a regular file: a FIFO (named pipe); reading it would block"
    assert bad["folder.mp4"] == "DecodeError: not a regular file: a directory"
    with pytest.raises(Exception, match="not a regular file: a FIFO") as info:  # the reader says the same
        load_clip(root / "abseiling" / "pipe.mp4", [0])
    assert "empty file" not in str(info.value)
    assert load_clip(root / "abseiling" / "stream.ts", [0, T - 1]).shape == (2, H, W, 3)


def _keyframe_flags(path: Path) -> list[bool]:
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
    packets.sort(key=lambda p: p.pts)  # presentation order
    return [bool(p.is_keyframe) for p in packets]


def test_reencode_videos(tmp_path):
    src = tmp_path / "src"
    (src / "class a").mkdir(parents=True)
    frames = make_frames(40, H, W, seed=3)
    write_video(src / "class a" / "x.mkv", frames, fps=25, gop=250)
    assert sum(_keyframe_flags(src / "class a" / "x.mkv")) == 1
    s = reencode_videos(src, tmp_path / "dst", short_side=64, gop=16, crf=23, workers=1, progress=False)
    assert (s.done, s.failed) == (1, 0) and s.extra["frames"] == 40
    assert s.extra["bytes_before"] > 0 and s.extra["bytes_after"] > 0
    out = tmp_path / "dst" / "class_a" / "x.mp4"
    flags = _keyframe_flags(out)
    assert len(flags) == 40 and [i for i, k in enumerate(flags) if k] == [0, 16, 32]
    dec = decode_all(out)
    assert dec.shape == (40, 64, 86, 3)  # 48x64 -> 64x85.3, rounded up to even width 86
    # same frames, in order, at the new size (nearest match of each output frame is its source)
    src_frames = decode_all(src / "class a" / "x.mkv")
    ref = np.stack([np.asarray(Image.fromarray(f).resize((86, 64), Image.BICUBIC)) for f in src_frames])
    err = np.abs(dec[:, None].astype(np.float32) - ref[None].astype(np.float32)).mean(axis=(2, 3, 4))
    assert (err.argmin(axis=1) == np.arange(40)).all()
    s2 = reencode_videos(src, tmp_path / "dst", short_side=64, workers=1, progress=False)
    assert (s2.done, s2.skipped) == (0, 1)
    # default: shorter side 256
    s3 = reencode_videos(src, tmp_path / "dst256", workers=1, progress=False)
    assert s3.done == 1
    assert decode_all(tmp_path / "dst256" / "class_a" / "x.mp4").shape == (40, 256, 342, 3)
