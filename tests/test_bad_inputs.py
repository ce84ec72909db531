"""Bad list files and videos give one clear error naming the file, line or field, before any work:
labels outside the class count (train, val, test lists; single- and multi-label), a UTF-8
byte-order mark, lists with no usable video, and `prepare scan --full-decode` on files the reader
rejects."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from videos import make_frames, write_video

from tcpnet.config import DataConfig
from tcpnet.data import RecordList, VideoRecord
from tcpnet.data.build import build_datasets, check_list_labels, read_list, read_lists
from tcpnet.data.dataset import ClipSpec, VideoDataset
from tcpnet.data.list_parsers import check_labels, read_charades, read_class_names, read_frame_list, read_video_list
from tcpnet.input_config import InputConfig
from tcpnet.tools import prepare
from tcpnet.tools.prepare import scan_videos

CLASSES = ["run", "walk", "jump", "sit"]


def tcpnet(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tcpnet", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `tcpnet: error:` line of a failed command (no traceback)."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tcpnet: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Six 8-frame 32x40 mp4 files v0..v5 and a class-name file."""
    root = tmp_path_factory.mktemp("bad_inputs")
    for k in range(6):
        write_video(root / f"v{k}.mp4", make_frames(8, 32, 40, seed=k), gop=4)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    return root


def _write(path: Path, lines) -> str:
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


# ----------------------------------------------------------------------------- labels


def test_records_keep_their_line_out_of_equality(tmp_path):
    recs = read_frame_list(_write(tmp_path / "l.txt", ["", "a 10 1", "", "b 3 0"]))
    assert [r.line for r in recs] == [2, 4]
    assert recs[0] == VideoRecord("a", 10, 1) and "line" not in repr(recs[0])
    assert hash(recs[0]) == hash(VideoRecord("a", 10, 1))


def test_check_labels_names_file_line_label_and_where_the_count_came_from(tmp_path):
    recs = read_frame_list(_write(tmp_path / "l.txt", ["a 8 1", "b 8 9", "c 8 3", "d 8 12"]))
    check_labels(recs, 13, "l.txt")
    with pytest.raises(ValueError) as e:
        check_labels(recs, 8, "l.txt", "data.train_list", "model.num_classes")
    msg = str(e.value)
    assert msg.startswith("l.txt:2 (data.train_list): label 9 is out of range for 8 classes (model.num_classes)")
    assert "2 records are out of range, the largest label is 12 (l.txt:4)" in msg
    multi = [VideoRecord("x", None, [0, 2], line=5), VideoRecord("y", None, [1, 6, 3], line=6)]
    with pytest.raises(ValueError, match=r"m.csv:6: label 6 is out of range for 4 classes"):
        check_labels(multi, 4, "m.csv")


def test_train_list_label_is_checked_against_model_num_classes(ws, tmp_path):
    train = _write(tmp_path / "train.txt", ["v0.mp4 8 0", "v1.mp4 8 8", "v2.mp4 8 3"])
    cfg = DataConfig(root=str(ws), train_list=train)
    with pytest.raises(ValueError, match=r"train.txt:2 \(data.train_list\): label 8 is out of range for 8 "
                                         r"classes \(model.num_classes\)"):
        read_lists(cfg, num_classes=8)
    assert len(read_lists(cfg, num_classes=9)["train"]) == 3


def test_val_list_label_is_checked_against_the_class_names(ws, tmp_path):
    train = _write(tmp_path / "train.txt", ["v0.mp4 8 0", "v1.mp4 8 3"])
    val = _write(tmp_path / "val.txt", ["v2.mp4 8 1", "v3.mp4 8 2", "v4.mp4 8 9"])
    cfg = DataConfig(root=str(ws), train_list=train, val_list=val, class_names=str(ws / "classes.txt"))
    with pytest.raises(ValueError) as e:
        read_lists(cfg)
    assert str(e.value).startswith(f"{val}:3 (data.val_list): label 9 is out of range for 4 classes "
                                   f"(from data.class_names = {ws / 'classes.txt'})")


def test_multi_label_list_is_checked(ws, tmp_path):
    csv = tmp_path / "charades.csv"
    csv.write_text('id,actions\nv0,"c001 0 1;c002 1 2"\nv1,"c003 0 1;c006 0.5 1"\n')
    cfg = DataConfig(root=str(ws), train_list=str(csv), multi_label=True, class_names=str(ws / "classes.txt"))
    with pytest.raises(ValueError, match=r"charades.csv:3 \(data.train_list\): label 6 is out of range for 4"):
        read_lists(cfg)


def test_check_list_labels_for_the_resolved_class_count(ws, tmp_path):
    train = _write(tmp_path / "train.txt", ["v0.mp4 8 0", "v1.mp4 8 3"])
    val = _write(tmp_path / "val.txt", ["v2.mp4 8 1", "v3.mp4 8 5"])
    cfg = DataConfig(root=str(ws), train_list=train, val_list=val)
    records = read_lists(cfg, num_classes=6)  # the count known: val classes the train list lacks are only warned about
    check_list_labels(records, 6, cfg, "inferred")
    with pytest.raises(ValueError, match=r"val.txt:2 \(data.val_list\): label 5 is out of range for 4 classes "
                                         r"\(from the checkpoint x.pt\)"):
        check_list_labels(records, 4, cfg, "from the checkpoint x.pt")


TRAIN_CONFIG = """\
model: {name: tcp_tiny, num_segments: 2, dropout: 0.0, kwargs: {dim: 16, mid_channels: 32}}
data: {root: DATA, train_list: train.txt, val_list: val.txt, class_names: DATA/classes.txt,
       num_workers: 0, flip: false, crop_size: 32, scale_size: 36}
train: {epochs: 1, batch_size: 2, lr: 0.01, lr_steps: [1]}
test: {batch_size: 2}
output_dir: run
device: cpu
"""


def test_train_stops_on_a_bad_val_label_before_training(ws, tmp_path):
    _write(tmp_path / "train.txt", ["v0.mp4 8 0", "v1.mp4 8 1", "v2.mp4 8 2", "v3.mp4 8 3"])
    _write(tmp_path / "val.txt", ["v4.mp4 8 0", "v5.mp4 8 4"])
    (tmp_path / "cfg.yaml").write_text(TRAIN_CONFIG.replace("DATA", str(ws)))
    err = one_error_line(tcpnet("train", "cfg.yaml", cwd=tmp_path))
    assert "val.txt:2 (data.val_list): label 4 is out of range for 4 classes" in err
    assert not (tmp_path / "run" / "last.pt").exists()


TEST_CONFIG = """\
data: {root: videos, val_list: val.txt, num_workers: 0}
test: {batch_size: 2}
output_dir: run
device: cpu
"""


def test_test_with_fewer_checkpoint_classes_than_labels_fails_before_decoding(tmp_path):
    from tcpnet import build_model
    from tcpnet.checkpoints import save_model

    save_model(build_model("tcp_tiny", num_classes=5, num_segments=2, dim=16, mid_channels=32),
               tmp_path / "five.pt")
    (tmp_path / "videos").mkdir()
    for k in range(4):  # not videos: decoding any of them would end in another error
        (tmp_path / "videos" / f"v{k}.mp4").write_bytes(b"not a video")
    _write(tmp_path / "val.txt", ["v0.mp4 8 0", "v1.mp4 8 7", "v2.mp4 8 2", "v3.mp4 8 6"])
    (tmp_path / "cfg.yaml").write_text(TEST_CONFIG)
    err = one_error_line(tcpnet("test", "cfg.yaml", "--checkpoint", "five.pt", cwd=tmp_path))
    assert "val.txt:2 (data.val_list): label 7 is out of range for 5 classes (from the checkpoint five.pt)" in err
    assert "the largest label is 7" in err


# ----------------------------------------------------------------------------- BOM


def test_byte_order_mark_is_ignored_in_every_text_format(ws, tmp_path):
    bom = "\ufeff"
    tsn = tmp_path / "tsn.txt"
    tsn.write_text(bom + "v0.mp4 8 0\nv1.mp4 8 1\n", encoding="utf-8")
    assert read_frame_list(tsn)[0].path == "v0.mp4"
    vid = tmp_path / "vid.txt"
    vid.write_text(bom + "v0.mp4 run\nv1.mp4 walk\n", encoding="utf-8")
    assert read_video_list(vid)[0].path == "v0.mp4"
    names = tmp_path / "names.txt"
    names.write_text(bom + "run\nwalk\n", encoding="utf-8")
    assert read_class_names(names) == ["run", "walk"]
    csv = tmp_path / "c.csv"
    csv.write_text(bom + 'id,actions\nv0,"c001 0 1"\n', encoding="utf-8")
    assert read_charades(csv, video_ext=".mp4")[0].path == "v0.mp4"
    # through the config: auto-detected, every video found under the root
    recs = read_lists(DataConfig(root=str(ws), train_list=str(tsn), class_names=str(names)))
    assert [r.path for r in recs["train"]] == ["v0.mp4", "v1.mp4"] and recs["train"].class_names == ["run", "walk"]


def test_prepare_reads_label_files_with_a_byte_order_mark(tmp_path):
    from tcpnet.tools.prepare import build_list

    root = tmp_path / "tree"
    for c in ("run", "walk"):
        (root / c).mkdir(parents=True)
        write_video(root / c / "a.mp4", make_frames(4, 32, 40), gop=4)
    (tmp_path / "labels.txt").write_text("\ufeffwalk\nrun\n", encoding="utf-8")
    s = build_list(root, tmp_path / "out.txt", label_file=tmp_path / "labels.txt", progress=False)
    assert s.failed == 0
    assert (tmp_path / "out.txt").read_text() == "run/a.mp4 4 1\nwalk/a.mp4 4 0\n"


# ----------------------------------------------------------------------------- empty lists


def test_list_with_no_usable_video_names_the_file_and_key(ws, tmp_path):
    short = _write(tmp_path / "short.txt", ["v0.mp4 2 0", "v1.mp4 1 1"])
    cfg = DataConfig(root=str(ws), train_list=short)
    records = read_lists(cfg)
    with pytest.raises(ValueError, match=r"short.txt \(data.train_list\): all 2 videos have fewer than 3 frames"):
        build_datasets(cfg, records, InputConfig(num_segments=2), num_classes=2, seed=0)
    empty = RecordList(source="e.txt (data.val_list)")
    with pytest.raises(ValueError, match=r"e.txt \(data.val_list\): no records"):
        VideoDataset(empty, clip=ClipSpec(lambda n, rng=None: [0]))
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match=r"blank.txt \(data.test_list\): no videos"):
        read_list(DataConfig(test_list=str(tmp_path / "blank.txt")), "test")


# ----------------------------------------------------------------------------- prepare scan


@pytest.fixture(scope="module")
def scan_tree(ws, tmp_path_factory) -> Path:
    """good.mp4, a truncated mp4 whose index sits at the start (FFmpeg opens it and decodes the
    frames it has), an audio-only .mp4, a truncated .mkv (complete packets only: readable)."""
    root = tmp_path_factory.mktemp("scan")
    frames = make_frames(24, 32, 40)
    write_video(root / "good.mp4", frames, gop=4)
    write_video(root / "whole.mp4", frames, gop=4, container_options={"movflags": "+faststart"})
    data = (root / "whole.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: int(len(data) * 0.8)])
    (root / "whole.mp4").unlink()
    import av

    with av.open(str(root / "audio.mp4"), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(8):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            for packet in s.encode(f):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return root


def test_full_decode_scan_is_as_strict_as_the_reader(scan_tree):
    from tcpnet.data import DecodeError, load_clip, probe

    for full in (False, True):
        bad = dict(scan_videos(scan_tree, full_decode=full, progress=False))
        assert sorted(Path(p).name for p in bad) == ["audio.mp4", "truncated.mp4"], bad
        assert bad[str(scan_tree / "audio.mp4")] == "DecodeError: no video stream"
        assert "truncated or corrupt data" in bad[str(scan_tree / "truncated.mp4")]
    with pytest.raises(DecodeError):  # what training does with the file the scan rejects
        load_clip(scan_tree / "truncated.mp4", [0])
    assert probe(scan_tree / "good.mp4").num_frames == 24


def test_full_decode_scan_compares_the_decoded_count_with_the_index(scan_tree, monkeypatch):
    good = str(scan_tree / "good.mp4")
    assert prepare._scan_one((good, True)) == ("done", good, 24)
    monkeypatch.setattr(prepare, "_count_decoded", lambda path: 23)
    assert prepare._scan_one((good, True)) == ("failed", good, "the packet index has 24 frames but decoding gives 23")


def test_scan_cli_names_each_problem(scan_tree, tmp_path):
    proc = tcpnet("prepare", "scan", scan_tree, "--full-decode", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = dict(line.split("\t", 1) for line in proc.stdout.splitlines())
    assert lines == {str(scan_tree / "audio.mp4"): "DecodeError: no video stream",
                     str(scan_tree / "truncated.mp4"): lines[str(scan_tree / "truncated.mp4")]}
    assert "2 unreadable video(s)" in proc.stderr
