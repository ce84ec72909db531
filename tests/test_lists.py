"""List formats parsed from small hand-written files; malformed lines name file:line."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from tcpnet.data import RecordList, VideoRecord
from tcpnet.data.list_parsers import (check_records, multi_hot, read_charades, read_class_folders, read_class_names,
                               read_frame_list, read_hmdb51_split, read_something_v1, read_something_v1_labels,
                               read_ucf101_class_ind, read_ucf101_split, read_video_list)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_frame_list_tsm_format(tmp_path):
    p = write(tmp_path / "train.txt",
              "playing_paintball/NVeQN7sDOUQ 360 0\n"
              "riding a bike/vid 01  120\t7\n"      # spaces in the path, tabs/double spaces
              "\n"
              "short/x 2 3\n")
    recs = read_frame_list(p)
    assert recs == [VideoRecord("playing_paintball/NVeQN7sDOUQ", 360, 0),
                    VideoRecord("riding a bike/vid 01", 120, 7),
                    VideoRecord("short/x", 2, 3)]
    assert [r.path for r in read_frame_list(p, min_frames=3)] == ["playing_paintball/NVeQN7sDOUQ",
                                                                  "riding a bike/vid 01"]


@pytest.mark.parametrize("line,msg", [
    ("onlypath 12", r"train\.txt:2: expected 'path num_frames label', got 2 field"),
    ("a/b 12 x", r"train\.txt:2: expected an integer label"),
    ("a/b twelve 3", r"train\.txt:2: expected an integer num_frames"),
    ("a/b 12 -1", r"train\.txt:2: expected non-negative"),
])
def test_frame_list_malformed(tmp_path, line, msg):
    p = write(tmp_path / "train.txt", f"ok/v 10 0\n{line}\n")
    with pytest.raises(ValueError, match=msg):
        read_frame_list(p)


def test_video_list_indices_and_names(tmp_path):
    ints = read_video_list(write(tmp_path / "a.txt", "x/1.mp4 3\nmy video.mp4 0\n"))
    assert ints == [VideoRecord("x/1.mp4", None, 3), VideoRecord("my video.mp4", None, 0)]
    assert ints.class_names is None
    names = read_video_list(write(tmp_path / "b.txt", "v1.mp4 zebra\nv2.mp4 ant\nv3.mp4 zebra\n"))
    assert names.class_names == ["ant", "zebra"]
    assert [r.label for r in names] == [1, 0, 1]
    given = read_video_list(tmp_path / "b.txt", class_names=["zebra", "ant"])
    assert [r.label for r in given] == [0, 1, 0]
    write(tmp_path / "labels.txt", "zebra\nant\nbee\n")
    assert [r.label for r in read_video_list(tmp_path / "b.txt", tmp_path / "labels.txt")] == [0, 1, 0]
    with pytest.raises(ValueError, match=r"b\.txt:1: expected a class index or one of the 2 class names"):
        read_video_list(tmp_path / "b.txt", class_names=["ant", "bee"])
    with pytest.raises(ValueError, match=r"c\.txt:2: expected 'path label'"):
        read_video_list(write(tmp_path / "c.txt", "v.mp4 1\nlonely\n"))


def test_class_folders(tmp_path):
    for rel in ["b_class/v2.mp4", "b_class/v1.mkv", "a class/x.avi", "a class/notes.txt"]:
        write(tmp_path / "root" / rel, "")
    recs = read_class_folders(tmp_path / "root")
    assert recs.class_names == ["a class", "b_class"]
    assert recs == [VideoRecord("a class/x.avi", None, 0), VideoRecord("b_class/v1.mkv", None, 1),
                    VideoRecord("b_class/v2.mp4", None, 1)]
    recs2 = read_class_folders(tmp_path / "root", class_names=["b_class", "zzz", "a class"])
    assert [r.label for r in recs2] == [2, 0, 0]
    with pytest.raises(ValueError, match="not in the class list"):
        read_class_folders(tmp_path / "root", class_names=["b_class"])


def test_something_v1(tmp_path):
    labels = write(tmp_path / "something-something-v1-labels.csv",
                   "Pushing something from left to right\nHolding something\nDropping something\n")
    names = read_something_v1_labels(labels)
    assert names == ["Dropping something", "Holding something", "Pushing something from left to right"]
    assert read_something_v1_labels(labels, sort=False)[0] == "Pushing something from left to right"
    csv = write(tmp_path / "something-something-v1-train.csv",
                "100218;Holding something\n48032;Pushing something from left to right\n")
    for i in range(1, 6):
        write(tmp_path / "frames" / "100218" / f"{i:05d}.jpg", "")
    recs = read_something_v1(csv, labels)  # labels file path: sorted as TSM does
    assert recs == [VideoRecord("100218", None, 1), VideoRecord("48032", None, 2)]
    (tmp_path / "frames" / "48032").mkdir()
    counted = read_something_v1(csv, names, frame_root=tmp_path / "frames")
    assert [r.num_frames for r in counted] == [5, 0]
    bad = write(tmp_path / "bad.csv", "1;Holding something\n2;Juggling\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2: label 'Juggling' is not one of the 3"):
        read_something_v1(bad, names)
    bad2 = write(tmp_path / "bad2.csv", "1 Holding something\n")
    with pytest.raises(ValueError, match=r"bad2\.csv:1: expected '<id>;<Label name>'"):
        read_something_v1(bad2, names)


CHARADES = """id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length
46GP8,HR43,Kitchen,6,7,Yes,"A person cooks, then eats.",food;dish,"A person, cooking.",c092 11.90 21.20;c147 0.00 12.60;c092 30.0 31.0,24.83
N11GT,0KZ7,Stairs,6,7,Yes,A person walks.,stairs,,,30.00
"""


def test_charades_multi_hot(tmp_path):
    p = write(tmp_path / "Charades_v1_train.csv", CHARADES)
    recs = read_charades(p)
    assert recs == [VideoRecord("46GP8.mp4", None, [92, 147]), VideoRecord("N11GT.mp4", None, [])]
    t = multi_hot(recs[0].label, 157)
    assert t.shape == (157,) and t.dtype == torch.float32
    assert t.sum() == 2 and t[92] == 1 and t[147] == 1
    assert multi_hot(recs[1].label, 157).sum() == 0
    bad = write(tmp_path / "bad.csv", CHARADES.replace("c147 0.00 12.60", "147 0.00 12.60"))
    with pytest.raises(ValueError, match=r"bad\.csv:2: expected actions 'cNNN start end"):
        read_charades(bad)
    with pytest.raises(ValueError, match=r"out of range for 100 classes"):
        read_charades(p, num_classes=100)


def test_hmdb51_splits(tmp_path):
    d = tmp_path / "splits"
    write(d / "brush_hair_test_split1.txt", "a_brush.avi 1 \nb_brush.avi 2 \nc_brush.avi 0 \n")
    write(d / "cartwheel_test_split1.txt", "a_cart.avi 2 \nb_cart.avi 1 \n")
    write(d / "cartwheel_test_split2.txt", "a_cart.avi 1 \n")
    train = read_hmdb51_split(d, split=1, subset="train")
    assert train.class_names == ["brush_hair", "cartwheel"]
    assert train == [VideoRecord("brush_hair/a_brush.avi", None, 0), VideoRecord("cartwheel/b_cart.avi", None, 1)]
    test = read_hmdb51_split(d, split=1, subset="test")
    assert [r.path for r in test] == ["brush_hair/b_brush.avi", "cartwheel/a_cart.avi"]
    write(d / "dive_test_split1.txt", "x.avi 3\n")
    with pytest.raises(ValueError, match=r"dive_test_split1\.txt:1: expected '<video> <0\|1\|2>'"):
        read_hmdb51_split(d, split=1)


def test_ucf101_splits(tmp_path):
    ind = write(tmp_path / "classInd.txt", "1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n")
    assert read_ucf101_class_ind(ind) == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    train = write(tmp_path / "trainlist01.txt",
                  "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g01_c01.avi 3\n")
    assert read_ucf101_split(train, ind) == [
        VideoRecord("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", None, 0),
        VideoRecord("Archery/v_Archery_g01_c01.avi", None, 2)]
    test = write(tmp_path / "testlist01.txt", "ApplyLipstick/v_ApplyLipstick_g01_c01.avi\n")
    assert read_ucf101_split(test, ind) == [VideoRecord("ApplyLipstick/v_ApplyLipstick_g01_c01.avi", None, 1)]
    bad = write(tmp_path / "bad.txt", "Archery/v.avi 1\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: label 1 \(1-based\) disagrees with folder 'Archery'"):
        read_ucf101_split(bad, ind)


def test_check_records_reports_all_missing(tmp_path):
    write(tmp_path / "a.mp4", "x")
    write(tmp_path / "frames" / "v1" / "img_00001.jpg", "x")
    (tmp_path / "frames" / "v2").mkdir()
    recs = [VideoRecord("a.mp4", None, 0), VideoRecord("b.mp4", None, 0),
            VideoRecord("frames/v1", 5, 0), VideoRecord("frames/v2", 5, 0), VideoRecord("c.mp4", None, 1)]
    missing = check_records(recs, tmp_path, frame_template="img_{:05d}.jpg", raise_error=False)
    assert sorted(Path(m).relative_to(tmp_path).as_posix() for m in missing) == ["b.mp4", "c.mp4", "frames/v2"]
    with pytest.raises(FileNotFoundError, match=r"2 of 5 videos missing") as ei:
        check_records(recs, tmp_path, frame_template="img_{:05d}.jpg")
    assert "b.mp4" in str(ei.value) and "c.mp4" in str(ei.value)
    v2 = tmp_path / "frames" / "v2"
    assert (f"1 of 5 frame folders without frame 1: frame 1 not found: {v2 / 'img_00001.jpg'} "
            f"(data.frame_template='img_{{:05d}}.jpg'); {v2} is empty") in str(ei.value)


def test_record_list_pickles_with_class_names():
    rl = RecordList([VideoRecord("a", 3, 1)], class_names=["x", "y"])
    back = pickle.loads(pickle.dumps(rl))
    assert back == rl and back.class_names == ["x", "y"]


def test_submodule_import_is_not_shadowed():
    """`from tcpnet.data import list_parsers` must give the list-file parsers. Checked in a fresh
    interpreter: importing the sub-module first, as this file does, would hide a shadowing bug."""
    import subprocess
    import sys

    code = ("from tcpnet.data import list_parsers as m; "
            "assert m.__name__ == 'tcpnet.data.list_parsers', m; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_empty_class_name_file_is_refused(tmp_path):
    (tmp_path / "classes.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="classes.txt: class name file is empty"):
        read_class_names(tmp_path / "classes.txt")
