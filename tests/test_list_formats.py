"""Every list format trains and tests from a config through the `tcpnet` CLI, on tiny generated
data laid out as each dataset distributes it: an HMDB51 split folder, UCF101 trainlist/testlist +
classInd.txt, a Something-Something V1 csv + labels over frame folders, a Kinetics class-folder
tree, a Charades csv (multi-label) and a `path label` video list.

The CLI runs in this process (`tcpnet.cli.main`), so each format costs one tiny training run
(tcp_tiny, 32 px, 1 epoch of 2 iterations) and one test run, not two interpreter start-ups.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

import numpy as np
import pytest
import torch
from videos import make_frames, write_frame_folder, write_video

from tcpnet.cli import main

SIZE, FRAMES = 32, 8

COMMON = ["model.name=tcp_tiny", "model.num_segments=4", "model.dropout=0.0", "model.kwargs.dim=16",
          "model.kwargs.mid_channels=32", "data.num_workers=0", "data.flip=false", f"data.crop_size={SIZE}",
          f"data.scale_size={SIZE}", "train.epochs=1", "train.batch_size=2", "train.lr=0.01", "train.log_every=1",
          "train.max_iters_per_epoch=2", "test.batch_size=4", "device=cpu", "seed=0"]


class Case(NamedTuple):
    overrides: List[str]       # the data.* keys of this format
    test_paths: List[str]      # record paths of the test list, in order
    test_targets: list         # their labels (multi-hot rows for Charades)
    class_names: object        # what the checkpoint must carry (None: no names)


def _video(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "mpeg4" if path.suffix == ".avi" else "libx264"
    write_video(path, make_frames(FRAMES, SIZE, SIZE, seed=seed), codec=codec, gop=4)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def hmdb51(ws: Path) -> Case:
    """Split folder with two splits; split 2 swaps the roles of the videos; `0` lines are unused
    (their files do not exist, so reading them would fail the file check)."""
    classes, test_paths, test_targets = ["brush_hair", "cartwheel"], [], []
    for c, cls in enumerate(classes):
        names = [f"{cls}_{k}.avi" for k in range(4)]
        for k, name in enumerate(names):
            _video(ws / "videos" / cls / name, seed=10 * c + k)
        split1 = [f"{n} {1 if k < 2 else 2}" for k, n in enumerate(names)] + ["gone.avi 0"]
        split2 = [f"{n} {2 if k < 2 else 1}" for k, n in enumerate(names)] + ["gone.avi 0"]
        _write(ws / "splits" / f"{cls}_test_split1.txt", "\n".join(split1) + "\n")
        _write(ws / "splits" / f"{cls}_test_split2.txt", "\n".join(split2) + "\n")
        test_paths += [f"{cls}/{n}" for n in names[:2]]
        test_targets += [c, c]
    return Case([f"data.root={ws}/videos", "data.list_format=hmdb51", f"data.train_list={ws}/splits",
                 f"data.val_list={ws}/splits", "data.split=2"], test_paths, test_targets, classes)


def ucf101(ws: Path) -> Case:
    classes = ["ApplyEyeMakeup", "Archery"]
    _write(ws / "lists/classInd.txt", "".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    train, test, test_paths = [], [], []
    for c, cls in enumerate(classes):
        for g in range(3):
            rel = f"{cls}/v_{cls}_g0{g + 1}_c01.avi"
            _video(ws / "UCF-101" / rel, seed=10 * c + g)
            if g < 2:
                train.append(f"{rel} {c + 1}")
            else:
                test.append(rel)
                test_paths.append(rel)
    _write(ws / "lists/trainlist01.txt", "\n".join(train) + "\n")
    _write(ws / "lists/testlist01.txt", "\n".join(test) + "\n")
    return Case([f"data.root={ws}/UCF-101", "data.list_format=ucf101", f"data.class_names={ws}/lists/classInd.txt",
                 f"data.train_list={ws}/lists/trainlist01.txt", f"data.val_list={ws}/lists/testlist01.txt"],
                test_paths, [0, 1], classes)


def ssv1(ws: Path) -> Case:
    """Frame folders `<id>/{:05d}.jpg`; the labels file is unsorted and numbered after sorting."""
    labels = ["Pushing something", "Holding something"]
    _write(ws / "something-something-v1-labels.csv", "\n".join(labels) + "\n")
    rows = {"train": [], "validation": []}
    vid = 0
    for label in labels:
        for subset in ("train", "train", "validation"):
            vid += 1
            write_frame_folder(ws / "frames" / str(vid), make_frames(FRAMES, SIZE, SIZE, seed=vid),
                               template="{:05d}.jpg")
            rows[subset].append(f"{vid};{label}")
    for subset, lines in rows.items():
        _write(ws / f"something-something-v1-{subset}.csv", "\n".join(lines) + "\n")
    return Case([f"data.root={ws}/frames", "data.list_format=ssv1", "data.format=frames",  # frames {:05d}.jpg: the default
                 f"data.class_names={ws}/something-something-v1-labels.csv",
                 f"data.train_list={ws}/something-something-v1-train.csv",
                 f"data.val_list={ws}/something-something-v1-validation.csv"],
                ["3", "6"], [1, 0], sorted(labels))


def folders(ws: Path) -> Case:
    """A train and a val tree; the val tree lacks class `abseiling`, so its own folder names would
    number the classes differently: the train tree's numbering must be used."""
    classes = ["abseiling", "bowling", "juggling"]
    for c, cls in enumerate(classes):
        for k in range(2):
            _video(ws / "k400/train" / cls / f"{cls}_{k}.mp4", seed=10 * c + k)
    for cls in classes[1:]:
        _video(ws / "k400/val" / cls / f"{cls}_v.mp4", seed=99)
    return Case([f"data.root={ws}/k400", "data.list_format=folders", f"data.train_list={ws}/k400/train",
                 f"data.val_list={ws}/k400/val"],
                ["val/bowling/bowling_v.mp4", "val/juggling/juggling_v.mp4"], [1, 2], classes)


def charades(ws: Path) -> Case:
    actions = {"AAAAA": "c000 0.0 1.0;c002 0.2 0.9", "BBBBB": "c001 0.0 0.5", "CCCCC": "c002 0.1 0.3",
               "DDDDD": "c000 0.0 0.4;c001 0.1 0.2", "EEEEE": "c001 0.3 0.6;c002 0.0 0.1", "FFFFF": "c000 0.0 0.2"}
    for k, vid in enumerate(actions):
        _video(ws / "Charades" / f"{vid}.mp4", seed=k)
    header = "id,subject,scene,actions\n"
    rows = [f'{vid},S{k},Kitchen,"{a}"' for k, (vid, a) in enumerate(actions.items())]
    _write(ws / "Charades_v1_train.csv", header + "\n".join(rows[:4]) + "\n")
    _write(ws / "Charades_v1_test.csv", header + "\n".join(rows[4:]) + "\n")
    return Case([f"data.root={ws}/Charades", "data.list_format=charades", "data.multi_label=true",
                 "model.num_classes=3", f"data.train_list={ws}/Charades_v1_train.csv",
                 f"data.val_list={ws}/Charades_v1_test.csv"],
                ["EEEEE.mp4", "FFFFF.mp4"], [[0, 1, 1], [1, 0, 0]], None)


def charades_frames(ws: Path) -> Case:
    """Charades as its frames are distributed: ``<id>/<id>-000001.jpg``; read with the format's
    default template (``{id}-{:06d}.jpg``), no data.frame_template given."""
    actions = {"AAAAA": "c000 0.0 1.0", "BBBBB": "c001 0.0 0.5;c002 0.1 0.2", "CCCCC": "c002 0.1 0.3",
               "DDDDD": "c000 0.0 0.4", "EEEEE": "c001 0.3 0.6", "FFFFF": "c000 0.0 0.2;c002 0.0 0.1"}
    for k, vid in enumerate(actions):
        write_frame_folder(ws / "Charades_v1_rgb" / vid, make_frames(FRAMES, SIZE, SIZE, seed=k),
                           template=vid + "-{:06d}.jpg")
    header = "id,subject,scene,actions\n"
    rows = [f'{vid},S{k},Kitchen,"{a}"' for k, (vid, a) in enumerate(actions.items())]
    _write(ws / "Charades_v1_train.csv", header + "\n".join(rows[:4]) + "\n")
    _write(ws / "Charades_v1_test.csv", header + "\n".join(rows[4:]) + "\n")
    return Case([f"data.root={ws}/Charades_v1_rgb", "data.format=frames", "data.multi_label=true",
                 "model.num_classes=3", f"data.train_list={ws}/Charades_v1_train.csv",
                 f"data.val_list={ws}/Charades_v1_test.csv"],  # list_format auto: a .csv is Charades
                ["EEEEE", "FFFFF"], [[0, 1, 0], [1, 0, 1]], None)


def video(ws: Path) -> Case:
    """`path label` with class names as labels and no class file: names sorted as found."""
    lines = {"train": [], "val": []}
    for c, cls in enumerate(["run", "jump"]):
        for k, subset in enumerate(("train", "train", "val")):
            rel = f"clips/{cls}_{k}.webm" if k == 0 else f"clips/{cls}_{k}.mp4"
            path = ws / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            codec = "libvpx-vp9" if rel.endswith(".webm") else "libx264"
            write_video(path, make_frames(FRAMES, SIZE, SIZE, seed=10 * c + k), codec=codec, gop=4)
            lines[subset].append(f"{rel} {cls}")
    for subset, rows in lines.items():
        _write(ws / f"{subset}.txt", "\n".join(rows) + "\n")
    return Case([f"data.root={ws}", "data.list_format=video", f"data.train_list={ws}/train.txt",
                 f"data.val_list={ws}/val.txt"], ["clips/run_2.mp4", "clips/jump_2.mp4"], [1, 0], ["jump", "run"])


FORMATS: Dict[str, Callable[[Path], Case]] = {
    "hmdb51": hmdb51, "ucf101": ucf101, "ssv1": ssv1, "folders": folders, "charades": charades, "video": video,
    "charades_frames": charades_frames,
}


@pytest.fixture
def cli(capsys):
    """`tcpnet ARGS` in this process; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> str:
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert rc == 0, f"tcpnet {' '.join(map(str, args))} exited {rc}\n{err[-3000:]}"
        return out

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_format_trains_and_tests_through_cli(fmt, tmp_path, cli):
    case = FORMATS[fmt](tmp_path / "data")
    config = _write(tmp_path / "run.yaml", f"output_dir: {tmp_path / 'run'}\n")
    overrides = COMMON + case.overrides

    out = cli("train", config, *overrides)
    assert out.startswith("done: ")
    ckpt = torch.load(tmp_path / "run/last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["class_names"] == case.class_names
    num_classes = len(case.class_names) if case.class_names else 3
    assert ckpt["num_classes"] == num_classes

    cli("test", config, *overrides, "--out", tmp_path / "test")
    metrics = json.loads((tmp_path / "test/metrics.json").read_text())
    assert metrics["num_videos"] == len(case.test_paths) and metrics["num_classes"] == num_classes
    scores = np.load(tmp_path / "test/scores.npz")
    assert list(scores["paths"]) == case.test_paths
    assert scores["targets"].tolist() == case.test_targets
    assert np.isfinite(scores["view_logits"]).all()
    if fmt.startswith("charades"):
        assert "mAP" in metrics
    else:
        assert set(metrics["per_class_accuracy"]) == set(case.class_names)


def test_a_missing_first_frame_names_the_file_and_the_template(tmp_path):
    """A frame template that does not match the folders: one error before any work that names the
    file frame 1 should be, the template, and what the folder holds instead."""
    from tcpnet.config import ConfigError, load_config
    from tcpnet.data.build import check_data_config, read_lists

    ws = tmp_path / "data"
    case = ssv1(ws)
    cfg = load_config(None, COMMON + case.overrides + ["data.frame_template=frame{:04d}.png"])
    with pytest.raises(FileNotFoundError) as e:
        read_lists(cfg.data)
    msg = str(e.value)
    assert "something-something-v1-train.csv (data.train_list): 4 of 4 frame folders without frame 1" in msg
    assert (f"frame 1 not found: {ws / 'frames' / '1' / 'frame0001.png'} (data.frame_template='frame{{:04d}}.png'); "
            f"{ws / 'frames' / '1'} holds 00001.jpg, 00002.jpg, 00003.jpg ...") in msg
    with pytest.raises(ConfigError, match=r"data.frame_template='frame.png': expected one '\{\}' field"):
        check_data_config(load_config(None, ["data.frame_template=frame.png"]).data)
