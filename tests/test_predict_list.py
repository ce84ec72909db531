"""``tcpnet predict --list``: one JSON line per video equal to ``predict VIDEO``'s, bad files as lines
with an error (exit 1), a rerun after SIGKILL appends only the missing videos (a torn last line cut
off), 2 torchrun ranks write the set 1 process writes."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tcpnet.apps.predict import predict_videos
from tcpnet.checkpoints import save_model
from tcpnet.cli import main
from tcpnet.models import build_model
from videos import make_frames, write_video

SRC = str(Path(__file__).resolve().parents[1] / "src")
NUM_VIDEOS = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny TCP model (small crops: fast on CPU) saved as a checkpoint, 8 mp4s, a plain list of
    paths with a text file posing as a video in the middle."""
    d = tmp_path_factory.mktemp("plist")
    torch.manual_seed(0)
    model = build_model("tcp_tiny", num_classes=5, num_segments=4, dim=16, mid_channels=32).eval()
    model.input_config = dataclasses.replace(model.input_config, crop_size=48, scale_size=56)
    torch.nn.init.normal_(model.fc.weight, std=0.5)  # logits of order 1, so the probabilities differ
    ckpt = save_model(model, d / "m.pt")
    names = [str(write_video(d / f"v{i}.mp4", make_frames(9 + i, 40, 56, seed=i))) for i in range(NUM_VIDEOS)]
    (d / "notes.mp4").write_text("not a video\n")
    videos = names[:3] + [str(d / "notes.mp4")] + names[3:]
    (d / "paths.txt").write_text("\n".join(videos) + "\n")
    return d, model, ckpt, videos


def _env():
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def read_out(path: Path) -> dict:
    """video -> line; every video once."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_video = {line["video"]: line for line in lines}
    assert len(by_video) == len(lines), "a video has two lines"
    return by_video


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    d, model, ckpt, videos = setup
    out = tmp_path_factory.mktemp("ref") / "preds.jsonl"
    assert main(["predict", "--list", str(d / "paths.txt"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--topk", "3", "--views", "1x2", "--device", "cpu"]) == 1  # notes.mp4
    return read_out(out)


def test_lines_equal_predict_videos_and_bad_file_is_an_error_line(setup, reference, capsys):
    d, model, ckpt, videos = setup
    want = {p.video: p.to_dict() for p in predict_videos(model, videos, views="1x2", topk=3)}
    assert sorted(reference) == sorted(videos)
    for v in videos:
        got, exp = reference[v], want[v]
        assert got["error"] == exp["error"] and [t["label"] for t in got["topk"]] == [t["label"] for t in exp["topk"]]
        for a, b in zip(got["topk"], exp["topk"]):
            assert a["prob"] == pytest.approx(b["prob"], abs=1e-6)  # same pipeline, same float32 forward
        assert "label" not in got  # a plain list of paths has no labels
    assert "cannot open as a video" in reference[str(d / "notes.mp4")]["error"]


def test_labelled_list_rerun_and_refusals(setup, tmp_path, capsys):
    """A registered format (``<path> <label>``) adds the label; a rerun on the complete output does
    nothing; other settings are refused naming them; --list without --out is one error line."""
    d, _, ckpt, videos = setup
    (tmp_path / "val.txt").write_text("".join(f"{Path(v).name} {i % 5}\n" for i, v in enumerate(videos[:3])))
    out = tmp_path / "p.jsonl"
    args = ["predict", "--list", str(tmp_path / "val.txt"), "--root", str(d), "--checkpoint", str(ckpt),
            "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    lines = read_out(out)
    assert [lines[Path(v).name]["label"] for v in videos[:3]] == [0, 1, 2]
    text = out.read_text()
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().out and out.read_text() == text
    assert main(args + ["--topk", "2"]) == 1
    assert "different topk (5, now 2)" in capsys.readouterr().err
    assert main(args[:-4] + ["--device", "cpu"]) == 1
    assert "--out FILE.jsonl is required" in capsys.readouterr().err


SLOW_PREDICT = """
import sys, time
import tcpnet.apps.predict as m
put = m.PredictionLines.put
def slow(self, *a):
    put(self, *a)
    time.sleep(0.25)
m.PredictionLines.put = slow
from tcpnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_then_rerun_appends_only_the_missing(setup, reference, tmp_path):
    d, _, ckpt, videos = setup
    out = tmp_path / "preds.jsonl"
    args = ["predict", "--list", str(d / "paths.txt"), "--checkpoint", str(ckpt), "--out", str(out),
            "--topk", "3", "--views", "1x2", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREDICT, *args], env=_env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out.is_file() and out.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = out.read_text().splitlines()
    assert 2 <= len(first) < len(videos), "the run finished before the kill"
    with open(out, "a") as f:  # a kill in the middle of a line
        f.write('{"video": "' + videos[-1] + '", "topk": [{"lab')
    assert main(args) == 1
    lines = out.read_text().splitlines()
    assert lines[:len(first)] == first  # kept, not redone
    got = read_out(out)
    assert sorted(got) == sorted(videos)
    for v in videos:
        assert got[v]["error"] == reference[v]["error"]
        assert [t["label"] for t in got[v]["topk"]] == [t["label"] for t in reference[v]["topk"]]
        for a, b in zip(got[v]["topk"], reference[v]["topk"]):
            assert a["prob"] == pytest.approx(b["prob"], abs=1e-6)


def test_two_torchrun_ranks_write_the_single_process_set(setup, reference, tmp_path):
    d, _, ckpt, videos = setup
    out = tmp_path / "ddp.jsonl"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "tcpnet", "predict", "--list", str(d / "paths.txt"), "--checkpoint", str(ckpt),
                           "--out", str(out), "--topk", "3", "--views", "1x2", "--device", "cpu"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "1 of 9 video(s) could not be predicted" in proc.stderr, proc.stderr
    got = read_out(out)
    assert sorted(got) == sorted(videos) and not list(tmp_path.glob("*.part"))
    for v in videos:
        assert [t["label"] for t in got[v]["topk"]] == [t["label"] for t in reference[v]["topk"]]
        for a, b in zip(got[v]["topk"], reference[v]["topk"]):
            assert a["prob"] == pytest.approx(b["prob"], abs=1e-6)
