"""The `tcpnet` command end to end on a tiny synthetic dataset, through subprocesses:
synth -> train -> test (1x1, 3x2, ensemble, torchrun) -> predict -> convert, plus the
one-line errors for bad inputs and the shipped-config lookup."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tcpnet.config import find_config, list_configs
from tcpnet.config import ConfigError
from tcpnet.engine.evaluate import fuse_views
from tcpnet.engine.metrics import topk_accuracy
from tcpnet.apps.test import fuse_scores

NUM_CLASSES, VAL_VIDEOS = 4, 8
TINY_CONFIG = """\
model: {name: tcp_tiny, num_segments: 4, dropout: 0.0, kwargs: {dim: 16, mid_channels: 32}}
data: {root: data, train_list: data/train.txt, val_list: data/val.txt, class_names: data/classes.txt,
       num_workers: 0, flip: false, crop_size: 48, scale_size: 56}
train: {epochs: 2, batch_size: 4, lr: 0.02, lr_steps: [1], log_every: 3}
test: {batch_size: 4}
output_dir: run
device: cpu
"""


def tcpnet(*args, cwd, env=None, check=True):
    """Run `python -m tcpnet ARGS` in ``cwd``; return the CompletedProcess (text)."""
    proc = subprocess.run([sys.executable, "-m", "tcpnet", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tcpnet {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_error(proc, *needles):
    """Non-zero exit, exactly one 'tcpnet: error:' line naming ``needles``, no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tcpnet: error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A workspace with synthetic data (4 classes x 3 train / 2 val, 16 frames, 64x64) made by
    `tcpnet synth` and a tcp_tiny model trained for 2 epochs by `tcpnet train`."""
    ws = tmp_path_factory.mktemp("cli")
    synth = tcpnet("synth", "data", "--num-classes", NUM_CLASSES, "--train-per-class", 3, "--val-per-class", 2,
                   "--frames", 16, "--size", 64, cwd=ws)
    assert "12 train / 8 val videos" in synth.stdout
    (ws / "tiny.yaml").write_text(TINY_CONFIG)
    train = tcpnet("train", "tiny.yaml", "train.epochs=2", cwd=ws)
    ws.joinpath("train_stdout.txt").write_text(train.stdout)
    return ws


@pytest.mark.slow
def test_train_writes_checkpoints(run_dir):
    out = run_dir / "run"
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert (run_dir / "train_stdout.txt").read_text().startswith("done: run")
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["model_name"] == "tcp_tiny"
    assert ckpt["class_names"] == ["move_right", "move_left", "grow", "shrink"]


def _check_test_outputs(ws: Path, out: Path, num_views: int, fusion: str, num_models: int = 1):
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_videos"] == VAL_VIDEOS and metrics["num_views"] == num_views
    assert metrics["fusion"] == fusion and metrics["num_classes"] == NUM_CLASSES
    npz = np.load(out / "scores.npz")
    logits = npz["view_logits"]
    shape = (VAL_VIDEOS, num_views, NUM_CLASSES)
    assert logits.shape == (shape if num_models == 1 else (num_models, *shape))
    assert np.isfinite(logits).all()
    targets = torch.from_numpy(npz["targets"])
    assert targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # val list order
    assert list(npz["paths"]) == [line.split()[0] for line in (ws / "data/val.txt").read_text().splitlines()]
    assert str(npz["fusion"]) == fusion

    # re-fusing offline reproduces the saved scores and metrics.json exactly
    refused = fuse_scores(logits, fusion, npz["weights"])
    np.testing.assert_allclose(refused.numpy(), npz["scores"], rtol=0, atol=1e-6)
    assert topk_accuracy(refused, targets, ks=(1,))[1] == pytest.approx(metrics["top1"], abs=1e-9)
    preds = refused.argmax(1)
    assert metrics["top1"] == pytest.approx(100.0 * (preds == targets).float().mean().item())

    # confusion matrix: header of class names, rows sum to the per-class counts, diagonal = hits
    with open(out / "confusion_matrix.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == ["move_right", "move_left", "grow", "shrink"]
    cm = np.array([[int(c) for c in r[1:]] for r in rows[1:]])
    assert cm.sum(1).tolist() == [2, 2, 2, 2]
    assert np.trace(cm) == int((preds == targets).sum())
    per_class = metrics["per_class_accuracy"]
    assert metrics["mean_class_acc"] == pytest.approx(np.mean(list(per_class.values())))
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return metrics, npz


@pytest.fixture(scope="module")
def tested_1x1(run_dir):
    """`tcpnet test --views 1x1` of the trained model (default output dir run/test_1x1)."""
    proc = tcpnet("test", "tiny.yaml", "--checkpoint", "run/best.pt", "--views", "1x1", cwd=run_dir)
    assert "8 videos, 1x1 views, max-prob: top-1" in proc.stdout
    return run_dir / "run/test_1x1"


@pytest.mark.slow
def test_test_1x1_and_multiview(run_dir, tested_1x1):
    m1, npz1 = _check_test_outputs(run_dir, run_dir / "run/test_1x1", 1, "max-prob")

    # 3 full-resolution crops x 2 clips, mean-prob fusion, overrides after the options
    tcpnet("test", "tiny.yaml", "--checkpoint", "run/best.pt", "--views", "3x2", "--fusion", "mean-prob",
                  "--out", "t32", "test.batch_size=3", cwd=run_dir)
    m32, npz32 = _check_test_outputs(run_dir, run_dir / "t32", 6, "mean-prob")
    # the 1x1 view (centre 48x48 crop) and the first 3x2 view (full-resolution 56x56 left crop) differ
    assert not np.allclose(npz32["view_logits"][:, 0], npz1["view_logits"][:, 0])
    # softmax per view then the mean: the saved fused scores are probabilities
    np.testing.assert_allclose(npz32["scores"].sum(1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_test_ensemble_weights(run_dir):
    tcpnet("test", "tiny.yaml", "--checkpoint", "run/best.pt,run/last.pt", "--weights", "1,0.5",
           "--views", "1x2", "--out", "ens", cwd=run_dir)
    metrics, npz = _check_test_outputs(run_dir, run_dir / "ens", 2, "max-prob", num_models=2)
    assert npz["weights"].tolist() == [1.0, 0.5]
    logits = torch.from_numpy(npz["view_logits"])
    expected = (1.0 * fuse_views(logits[0], "max-prob") + 0.5 * fuse_views(logits[1], "max-prob")) / 2
    np.testing.assert_allclose(npz["scores"], expected.numpy(), atol=1e-6)
    assert [m["checkpoint"] for m in metrics["per_model"]] == ["run/best.pt", "run/last.pt"]
    assert [m["weight"] for m in metrics["per_model"]] == [1.0, 0.5]
    # a weight count that does not match is a one-line error
    bad = tcpnet("test", "tiny.yaml", "--checkpoint", "run/best.pt,run/last.pt", "--weights", "1",
                 cwd=run_dir, check=False)
    assert_one_line_error(bad, "--weights", "1 weight(s) for 2 checkpoint(s)")


@pytest.mark.slow
def test_test_under_torchrun_matches_single_process(run_dir, tmp_path):
    """2 gloo ranks on an odd number of videos: every video once, same scores as one process."""
    lines = (run_dir / "data/val.txt").read_text().splitlines()
    (run_dir / "val7.txt").write_text("\n".join(lines[:7]) + "\n")
    common = ["tiny.yaml", "--checkpoint", "run/best.pt", "--views", "1x2", "data.test_list=val7.txt"]
    tcpnet("test", *common, "--out", "single", cwd=run_dir)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", "-m", "tcpnet", "test", *common, "--out", "ddp"],
                          cwd=run_dir, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    single = np.load(run_dir / "single/scores.npz")
    ddp = np.load(run_dir / "ddp/scores.npz")
    assert ddp["view_logits"].shape == (7, 2, NUM_CLASSES)
    assert list(ddp["paths"]) == list(single["paths"])
    # same weights, same inputs; BN in eval mode: only summation order may differ
    np.testing.assert_allclose(ddp["view_logits"], single["view_logits"], rtol=1e-5, atol=1e-6)
    m1 = json.loads((run_dir / "single/metrics.json").read_text())
    m2 = json.loads((run_dir / "ddp/metrics.json").read_text())
    assert m2["num_videos"] == 7 and m2["top1"] == m1["top1"]


@pytest.mark.slow
def test_predict_json_and_text(run_dir, tested_1x1, tmp_path):
    videos = ["data/videos/val/grow/00000.mp4", "data/videos/val/move_left/00001.mp4"]
    proc = tcpnet("predict", *videos, "--checkpoint", "run/best.pt", "--topk", 3, "--json", cwd=run_dir)
    preds = json.loads(proc.stdout)
    assert [p["video"] for p in preds] == videos
    for p in preds:
        assert p["error"] is None and len(p["topk"]) == 3
        probs = [t["prob"] for t in p["topk"]]
        assert probs == sorted(probs, reverse=True) and all(0 <= q <= 1 for q in probs)
        assert sum(probs) <= 1 + 1e-6
        assert {t["name"] for t in p["topk"]} <= {"move_right", "move_left", "grow", "shrink"}
        for t in p["topk"]:
            assert ["move_right", "move_left", "grow", "shrink"][t["label"]] == t["name"]

    # 1x1 predict equals softmax of `tcpnet test --views 1x1` logits for the same video
    npz = np.load(tested_1x1 / "scores.npz")
    i = list(npz["paths"]).index("videos/val/grow/00000.mp4")
    probs = torch.from_numpy(npz["view_logits"][i, 0]).softmax(-1)
    for t in preds[0]["topk"]:
        assert t["prob"] == pytest.approx(probs[t["label"]].item(), abs=1e-5)

    # --labels renames the classes; text output lists each video with its ranked classes
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n")
    proc = tcpnet("predict", videos[0], "--checkpoint", "run/best.pt", "--labels", tmp_path / "labels.txt",
                  "--topk", 10, cwd=run_dir)
    lines = proc.stdout.splitlines()
    assert lines[0] == videos[0] and len(lines) == 1 + NUM_CLASSES  # topk clipped to K
    assert {line.split()[1] for line in lines[1:]} == {"a", "b", "c", "d"}


@pytest.mark.slow
def test_predict_non_video_is_one_error_line(run_dir, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    good = "data/videos/val/shrink/00000.mp4"
    proc = tcpnet("predict", good, bad, "--checkpoint", "run/best.pt", "--json", cwd=run_dir, check=False)
    line = assert_one_line_error(proc, "notes.mp4")
    assert proc.returncode == 1 and "video" in line
    preds = json.loads(proc.stdout)  # the good video is still predicted
    assert preds[0]["error"] is None and len(preds[0]["topk"]) == NUM_CLASSES
    assert preds[1]["error"] and not preds[1]["topk"]


@pytest.mark.slow
def test_convert_authors_checkpoint_then_predict(run_dir, tmp_path):
    """An authors'-layout file (DataParallel 'module.base_model.*', 'module.new_fc.*') converts to our
    format (torch and .safetensors) with identical tensors, and predict runs on it."""
    from tcpnet.checkpoints import build_model_from_checkpoint

    ours = torch.load(run_dir / "run/best.pt", map_location="cpu", weights_only=True)["state_dict"]
    theirs = {}
    for k, v in ours.items():
        prefix, rest = k.split(".", 1)
        theirs[{"backbone": "module.base_model.", "head": "module.base_model.TCP.", "fc": "module.new_fc."}[prefix]
               + rest] = v
    torch.save({"epoch": 2, "arch": "resnet_tiny", "best_prec1": 25.0, "state_dict": theirs}, tmp_path / "a.pth.tar")
    for dst in ("conv.pt", "conv.safetensors"):
        proc = tcpnet("convert", tmp_path / "a.pth.tar", tmp_path / dst, "--model", "tcp_tiny", "--segments", 4,
                      "--set", "dim=16", "--set", "mid_channels=32", "--classes", run_dir / "data/classes.txt",
                      cwd=run_dir)
        assert "loaded 103/103" in proc.stdout
        model = build_model_from_checkpoint(tmp_path / dst)
        assert model.class_names == ["move_right", "move_left", "grow", "shrink"]
        for k, v in model.state_dict().items():
            assert torch.equal(v, ours[k]), k
    proc = tcpnet("predict", "data/videos/val/grow/00001.mp4", "--checkpoint", tmp_path / "conv.pt", "--json",
                  cwd=run_dir)
    pred = json.loads(proc.stdout)[0]
    assert pred["error"] is None and pred["topk"][0]["name"] in ("move_right", "move_left", "grow", "shrink")
    # the wrong architecture is refused with one line
    proc = tcpnet("convert", tmp_path / "a.pth.tar", tmp_path / "x.pt", "--model", "tsn_tiny", "--segments", 4,
                  cwd=run_dir, check=False)
    assert_one_line_error(proc)


@pytest.mark.slow
@pytest.mark.parametrize("args, needles", [
    (["train", "tiny.yaml", "train.epochz=3"], ["unknown key", "train.epochz"]),
    (["train", "tiny.yaml", "train.epochs=three"], ["train.epochs", "three"]),
    (["train", "tiny.yaml", "data.train_list=missing_list.txt"], ["missing_list.txt"]),
    (["test", "tiny.yaml", "--checkpoint", "run/nope.pt"], ["run/nope.pt", "not found"]),
    (["test", "tiny.yaml", "--checkpoint", "run/best.pt", "--views", "4x2"], ["crops", "4"]),
    (["predict", "data/classes.txt", "--checkpoint", "run/best.pt"], ["classes.txt"]),
    (["predict", "data/videos/val/grow/00000.mp4", "--checkpoint", "run/nope.pt"], ["run/nope.pt"]),
    (["train", "no/such/config"], ["no/such/config", "config file not found", "demo/tcp"]),
])
def test_bad_inputs_give_one_error_line(run_dir, args, needles):
    assert_one_line_error(tcpnet(*args, cwd=run_dir, check=False), *needles)


@pytest.mark.slow
def test_missing_videos_are_reported_up_front(run_dir):
    """data.check_files: every missing video of a list is named before training starts."""
    lines = (run_dir / "data" / "train.txt").read_text().splitlines()
    (run_dir / "gappy.txt").write_text("\n".join(lines[:2] + ["videos/train/grow/gone_1.mp4 16 2",
                                                             "videos/train/grow/gone_2.mp4 16 2"]) + "\n")
    proc = tcpnet("train", "tiny.yaml", "data.train_list=gappy.txt", "output_dir=gappy_run", cwd=run_dir, check=False)
    assert_one_line_error(proc, "gappy.txt", "data.train_list", "2 of 4 videos missing", "gone_1.mp4", "gone_2.mp4")
    assert not (run_dir / "gappy_run" / "last.pt").exists()


@pytest.mark.slow
def test_debug_flag_shows_traceback(run_dir):
    proc = tcpnet("--debug", "train", "tiny.yaml", "train.epochz=3", cwd=run_dir, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    proc = tcpnet("train", "tiny.yaml", "train.epochz=3", "--debug", cwd=run_dir, check=False)  # after the command
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_shipped_config_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repo: relative configs/ does not exist here
    names = list_configs()
    assert "demo/tcp" in names and "k400/tcp_tsn_r50_8f" in names
    for name in ("demo/tcp", "demo/tcp.yaml", "configs/demo/tcp.yaml"):
        path = find_config(name)
        assert path.is_file() and path.parts[-2:] == ("demo", "tcp.yaml")
    local = tmp_path / "mine.yaml"
    local.write_text("seed: 3\n")
    assert find_config("mine.yaml") == Path("mine.yaml")  # an existing file wins
    with pytest.raises(ConfigError, match="config file not found"):
        find_config("demo/nope")
    # through the command, from a directory without configs/: the shipped file is found and the
    # override error (not 'not found') comes back
    proc = tcpnet("train", "demo/tcp", "train.epochz=1", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "train.epochz")


def test_fuse_scores_single_and_ensemble():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g)
    for fusion in ("max-prob", "mean-prob", "mean-logit"):
        assert torch.allclose(fuse_scores(a, fusion), fuse_views(a, fusion))
        both = fuse_scores(torch.stack([a, b]), fusion, [2.0, 1.0])
        assert torch.allclose(both, (2 * fuse_views(a, fusion) + fuse_views(b, fusion)) / 2)
    assert torch.allclose(fuse_scores(a.numpy(), "max-prob"), a.softmax(-1).amax(1))
    with pytest.raises(ValueError, match="one per model"):
        fuse_scores(torch.stack([a, b]), "max-prob", [1.0])


def test_help_of_every_command(capsys):
    from tcpnet.cli import _COMMANDS, build_parser
    names = [row[0] for row in _COMMANDS]
    assert {"train", "test", "predict", "timeline", "stream", "extract", "export", "flops", "convert", "prepare", "synth", "demo", "models"} <= set(names)
    for cmd in names:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([cmd, "-h"])
        assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: tcpnet {cmd}")


def test_models_and_flops(tmp_path):
    proc = tcpnet("models", cwd=tmp_path)
    assert {"tcp_tsn_r50", "tcp_tea_r50", "tcp_tiny", "tsn_tiny"} <= set(proc.stdout.split())
    proc = tcpnet("flops", "tcp_tiny", "--segments", 4, "--size", 64, cwd=tmp_path)
    from tcpnet.models import build_model
    from tcpnet.utils.complexity import complexity
    c = complexity(build_model("tcp_tiny", num_segments=4), (1, 3, 4, 64, 64))
    assert f"{c['params'] / 1e6:.2f} M params" in proc.stdout and f"{c['gflops']:.2f} GFLOPs" in proc.stdout


@pytest.mark.slow
def test_prepare_build_list_and_scan(run_dir, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(run_dir / "data/videos/val", tree)
    proc = tcpnet("prepare", "build-list", tree, tmp_path / "list.txt", cwd=tmp_path)
    lines = (tmp_path / "list.txt").read_text().splitlines()
    assert len(lines) == VAL_VIDEOS and all(line.split()[1] == "16" for line in lines)
    assert sorted((tmp_path / "classes.txt").read_text().split()) == sorted(["move_right", "move_left", "grow", "shrink"])
    assert "8 done" in proc.stdout
    assert tcpnet("prepare", "scan", tree, cwd=tmp_path).returncode == 0
    (tree / "grow" / "broken.mp4").write_bytes(b"\x00" * 100)
    proc = tcpnet("prepare", "scan", tree, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "broken.mp4" in proc.stdout and "1 unreadable" in proc.stderr


@pytest.mark.slow
def test_test_multi_label_reports_map(run_dir):
    """Charades-style CSV (multi-label): mAP over classes with positives, no confusion matrix."""
    from tcpnet.engine.metrics import mean_average_precision

    rows = ["id,actions",
            "videos/val/grow/00000,c2 0.0 1.0;c0 0.2 0.5",
            "videos/val/shrink/00000,c3 0.0 1.0",
            "videos/val/move_left/00000,c1 0.0 1.0;c3 0.1 0.4",
            "videos/val/move_right/00001,"]  # no action: an all-zero target
    (run_dir / "charades.csv").write_text("\n".join(rows) + "\n")
    proc = tcpnet("test", "tiny.yaml", "--checkpoint", "run/best.pt", "--views", "1x2", "--out", "ml",
                  "data.test_list=charades.csv", "data.multi_label=true", cwd=run_dir)
    assert "mAP" in proc.stdout
    metrics = json.loads((run_dir / "ml/metrics.json").read_text())
    npz = np.load(run_dir / "ml/scores.npz")
    targets = torch.from_numpy(npz["targets"])
    assert targets.tolist() == [[1, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 0]]
    # multi-label data: the default (auto) fusion scores each class with its own sigmoid
    expected = mean_average_precision(fuse_scores(npz["view_logits"], "max-sigmoid"), targets)
    assert metrics["fusion"] == "max-sigmoid"
    assert metrics["num_videos"] == 4 and metrics["mAP"] == pytest.approx(expected, abs=1e-9)
    assert "top1" not in metrics and not (run_dir / "ml/confusion_matrix.csv").exists()
    # an explicit softmax fusion is still available (and still computed the same way)
    tcpnet("test", "tiny.yaml", "--checkpoint", "run/best.pt", "--views", "1x2", "--out", "ml_softmax",
           "--fusion", "max-prob", "data.test_list=charades.csv", "data.multi_label=true", cwd=run_dir)
    metrics = json.loads((run_dir / "ml_softmax/metrics.json").read_text())
    expected = mean_average_precision(fuse_scores(npz["view_logits"], "max-prob"), targets)
    assert metrics["num_videos"] == 4 and metrics["mAP"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("workers", [0, 2])
def test_undecodable_video_in_test_is_one_line_with_any_number_of_workers(run_dir, tmp_path, workers):
    """An error raised inside a DataLoader worker reaches the user as the same one line as in
    the main process (not torch's 'Caught DecodeError in DataLoader worker process 0' traceback)."""
    data = run_dir / "data"
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8)  # an mp4 header, then garbage
    lines = (data / "val.txt").read_text().splitlines()
    lines[3] = f"{bad} 16 {lines[3].split()[-1]}"
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    proc = tcpnet("test", "tiny.yaml", "--checkpoint", "run/best.pt", f"data.val_list={tmp_path / 'val.txt'}",
                  f"data.num_workers={workers}", f"output_dir={tmp_path / 'out'}", cwd=run_dir, check=False)
    line = assert_one_line_error(proc, str(bad))
    assert "worker process" not in proc.stderr and "Caught" not in proc.stderr, proc.stderr
    assert "cannot open as a video" in line


def test_flops_defaults_to_the_models_own_t_and_prints_the_input(capsys):
    """R(2+1)-D is a 16-frame model: `tcpnet flops r2plus1d_r18` counted 8 frames (half the
    FLOPs, under the same-looking number). Now T is the model's own and the input is printed."""
    from tcpnet.cli import main
    from tcpnet.models import build_model
    from tcpnet.utils.complexity import complexity

    assert main(["flops", "r2plus1d_r18", "--size", "32"]) == 0
    out = capsys.readouterr().out
    model = build_model("r2plus1d_r18", num_classes=400)
    assert model.num_segments == 16
    c = complexity(model, (1, 3, 16, 32, 32))
    assert out.startswith("r2plus1d_r18: T=16 frames of 32x32 (input 1x3x16x32x32), ")
    assert f"{c['gflops']:.2f} GFLOPs" in out
    assert main(["flops", "tsn_tiny", "--segments", "3", "--size", "32"]) == 0
    assert capsys.readouterr().out.startswith("tsn_tiny: T=3 frames of 32x32 (input 1x3x3x32x32), ")


def test_test_help_says_which_files_it_writes(capsys):
    from tcpnet.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["test", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "scores.npz (per-view logits, fused scores, targets, paths" in text and "metrics.json" in text
