"""``tcpnet extract``: features equal the model's own (head: forward_features; backbone: maps averaged
over T', h, w), bad videos listed with their reason (exit 1), a rerun after SIGKILL completes the set
with every video once, 2 torchrun ranks give the set 1 process gives, and the files read back with
plain safetensors + json (no tcpnet)."""
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

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tcpnet.apps.collection import read_collection
from tcpnet.apps.extract import ExtractOptions, extract_features
from tcpnet.apps.predict import build_predict_dataset
from tcpnet.checkpoints import save_model
from tcpnet.cli import main
from tcpnet.models import build_model
from videos import make_frames, write_video

SRC = str(Path(__file__).resolve().parents[1] / "src")
T, NUM_VIDEOS = 4, 7
# same float32 computation (one video per forward either way): only op order may differ
TOL = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny TCP model saved as a checkpoint, 7 short mp4s, a labelled list (relative to the folder)
    with one text file posing as a video and one missing video at the end."""
    d = tmp_path_factory.mktemp("extract")
    torch.manual_seed(0)
    model = build_model("tcp_tiny", num_classes=5, num_segments=T, dim=16, mid_channels=32).eval()
    model.input_config = dataclasses.replace(model.input_config, crop_size=48, scale_size=56)  # fast on CPU
    ckpt = save_model(model, d / "m.pt")
    (d / "videos").mkdir()
    names = [f"videos/v{i}.mp4" for i in range(NUM_VIDEOS)]
    for i, name in enumerate(names):
        write_video(d / name, make_frames(10 + i, 40, 56, seed=i))
    (d / "videos/notes.mp4").write_text("not a video\n")
    lines = [f"{n} {i % 5}" for i, n in enumerate(names)] + ["videos/notes.mp4 1", "videos/gone.mp4 2"]
    (d / "list.txt").write_text("\n".join(lines) + "\n")
    return d, model, ckpt, names


def _env():
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def load_set(out: Path) -> dict:
    """path -> (V, D) features, from the index and the shards; every path once across the shards."""
    index = json.loads((out / "index.json").read_text())
    rows, seen = {}, []
    for shard in index["shards"]:
        data = load_file(str(out / shard))
        from safetensors import safe_open
        with safe_open(str(out / shard), "np") as f:
            seen += json.loads(f.metadata()["videos"])
        for p, v in index["videos"].items():
            if v.get("shard") == shard:
                rows[p] = data["features"][v["row"]]
    assert sorted(seen) == sorted(rows), "a video is in two shards, or a shard holds one the index lacks"
    return rows


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """An uninterrupted run (views 1x2, shards of 3) through the library."""
    d, model, ckpt, _ = setup
    out = tmp_path_factory.mktemp("ref") / "feats"
    coll = read_collection(list_file=str(d / "list.txt"), root=str(d))
    res = extract_features(model, coll, str(out), ExtractOptions(views="1x2", shard_size=3), checkpoint=str(ckpt))
    return out, res


def test_head_and_backbone_features_are_the_models(setup, reference, tmp_path):
    d, model, ckpt, names = setup
    out, res = reference
    ds = build_predict_dataset(model, [str(d / n) for n in names], "1x2")
    clips = [ds.load(i, np.random.default_rng(0)) for i in range(len(names))]
    got = load_set(out)
    with torch.no_grad():
        for name, clip in zip(names, clips):
            want = model.forward_features(clip).numpy()
            assert got[name].shape == (2, model.head.out_dim)
            np.testing.assert_allclose(got[name], want, atol=TOL, rtol=0)
    # backbone level: the maps (B*T', C, h, w) averaged over T', h, w per view
    coll = read_collection(list_file=str(d / "list.txt"), root=str(d))
    extract_features(model, coll, str(tmp_path / "bb"), ExtractOptions(level="backbone", views="1x2"),
                     checkpoint=str(ckpt))
    got = load_set(tmp_path / "bb")
    with torch.no_grad():
        for name, clip in zip(names, clips):
            maps = model.backbone(model.frames(clip))  # (2*T, C, h, w), video-major
            want = maps.reshape(2, T, *maps.shape[1:]).mean(dim=(1, 3, 4)).numpy()
            np.testing.assert_allclose(got[name], want, atol=TOL, rtol=0)
    index = json.loads((out / "index.json").read_text())
    assert index["level"] == "head" and index["views"] == "1x2" and index["num_views"] == 2
    assert index["dim"] == model.head.out_dim and index["model"] == "tcp_tiny"
    assert index["num_videos"] == NUM_VIDEOS + 2 and index["num_bad"] == 2
    assert [index["videos"][n]["label"] for n in names] == [i % 5 for i in range(NUM_VIDEOS)]
    assert len(index["shards"]) == 3  # 9 videos in chunks of 3; the last holds 1 good + 2 bad


def test_bad_videos_listed_with_reason_and_exit_1(setup, tmp_path, capsys):
    d, model, ckpt, names = setup
    args = ["extract", str(d / "list.txt"), "--root", str(d), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "2 of 9 video(s) could not be read" in err and "notes.mp4" in err and "gone.mp4" in err
    index = json.loads((tmp_path / "o/index.json").read_text())
    assert "cannot open as a video" in index["videos"]["videos/notes.mp4"]["error"]
    assert "gone.mp4" in index["videos"]["videos/gone.mp4"]["error"]
    assert index["videos"]["videos/gone.mp4"]["label"] == 2
    assert len(load_set(tmp_path / "o")) == NUM_VIDEOS
    # a rerun on the complete set does nothing; other settings are refused in one line
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").iterdir()}
    assert main(args) == 1
    assert "nothing to do" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").iterdir()}
    assert main(args + ["--level", "backbone", "--views", "1x2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tcpnet: error:") and "level (head, now backbone)" in err[-1] and "views" in err[-1]


def test_orphan_shard_and_torn_journal_line_are_redone(setup, reference, tmp_path):
    """The two kill points a subprocess rarely hits: after a shard's rename but before its journal
    line (an orphan shard), and in the middle of the journal line (a torn line)."""
    d, model, ckpt, _ = setup
    ref_out, _ = reference
    want = load_set(ref_out)
    coll = read_collection(list_file=str(d / "list.txt"), root=str(d))
    opts = ExtractOptions(views="1x2", shard_size=3)
    out = tmp_path / "o"
    extract_features(model, coll, str(out), opts, checkpoint=str(ckpt))
    journal = out / "journal/rank0.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    (out / "index.json").unlink()
    journal.write_text(lines[0] + lines[1][:17])  # shard 1 orphaned and its line torn; shard 2 orphaned
    (out / ".features-r0-00004.safetensors.k3x9.tmp").write_bytes(b"half")  # what atomic_write leaves after a kill
    (out / ".index.json.q1w2.tmp").write_bytes(b"{")
    res = extract_features(model, coll, str(out), opts, checkpoint=str(ckpt))
    assert res.stats.committed_before == 3 and res.stats.done_here == 6
    got = load_set(out)
    assert sorted(got) == sorted(want)
    for p in want:
        np.testing.assert_array_equal(got[p], want[p])
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.tmp")) and len(list(out.glob("features-*"))) == 3


SLOW_EXTRACT = """
import sys, time
import tcpnet.apps.extract as m
put = m.FeatureShards.put
def slow(self, *a):
    put(self, *a)
    time.sleep(0.25)
m.FeatureShards.put = slow
from tcpnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_then_rerun_gives_every_video_once(setup, reference, tmp_path):
    d, _, ckpt, _ = setup
    want = load_set(reference[0])
    out = tmp_path / "o"
    args = ["extract", str(d / "list.txt"), "--root", str(d), "--checkpoint", str(ckpt), "--out", str(out),
            "--views", "1x2", "--shard-size", "2"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXTRACT, *args], env=_env(), stderr=subprocess.DEVNULL)
    journal = out / "journal/rank0.jsonl"
    deadline = time.time() + 60
    while not (journal.is_file() and journal.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0, 0.6))  # somewhere in the next shard: decoding, writing or committing
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "index.json").exists(), "the run finished before the kill"
    committed = journal.read_text().count("\n")
    assert main(args) == 1  # the two bad videos
    got = load_set(out)
    assert sorted(got) == sorted(want)
    for p in want:
        np.testing.assert_allclose(got[p], want[p], atol=TOL, rtol=0)
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    done = [p for e in entries for p in e["videos"] + list(e["bad"])]
    assert sorted(done) == sorted(set(done)) and len(done) == NUM_VIDEOS + 2 and len(entries) > committed


def test_two_torchrun_ranks_give_the_single_process_set(setup, reference, tmp_path):
    d, _, ckpt, _ = setup
    want = load_set(reference[0])
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "tcpnet", "extract", str(d / "list.txt"), "--root", str(d), "--checkpoint",
                           str(ckpt), "--out", str(out), "--views", "1x2", "--shard-size", "2"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "2 of 9 video(s) could not be read" in proc.stderr, proc.stderr
    assert sorted(p.name for p in (out / "journal").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    assert {n.split("-")[1] for n in json.loads((out / "index.json").read_text())["shards"]} == {"r0", "r1"}
    got = load_set(out)
    assert sorted(got) == sorted(want)
    for p in want:
        np.testing.assert_allclose(got[p], want[p], atol=TOL, rtol=0)


READ_BACK = """
import json, sys
import numpy as np
from safetensors.numpy import load_file
out = sys.argv[1]
index = json.load(open(out + "/index.json"))
shards = {s: load_file(out + "/" + s)["features"] for s in index["shards"]}
feats = {p: shards[v["shard"]][v["row"]].tolist() for p, v in index["videos"].items() if "shard" in v}
bad = {p: v["error"] for p, v in index["videos"].items() if "error" in v}
assert not [m for m in sys.modules if m.split(".")[0] in ("tcpnet", "torch")], "tcpnet or torch was imported"
print(json.dumps({"dim": index["dim"], "views": index["num_views"], "feats": feats, "bad": sorted(bad)}))
"""


def test_reading_back_needs_only_safetensors_and_json(reference):
    out, _ = reference
    proc = subprocess.run([sys.executable, "-c", READ_BACK, str(out)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=""))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    want = load_set(out)
    assert data["bad"] == ["videos/gone.mp4", "videos/notes.mp4"] and data["views"] == 2
    for p, rows in data["feats"].items():
        assert np.array(rows).shape == (2, data["dim"])
        np.testing.assert_array_equal(np.array(rows, dtype=np.float32), want[p])


def test_help_and_no_inputs(capsys, tmp_path):
    from tcpnet.cli import build_parser
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["extract", "-h"])
    assert e.value.code == 0 and "--level" in capsys.readouterr().out
    assert main(["extract", "--checkpoint", "m.pt", "--out", str(tmp_path / "o")]) == 1
    assert "tcpnet: error: no videos" in capsys.readouterr().err
