"""Exact resume: a run SIGKILLed in the middle of an epoch and resumed ends with the same weights as
an uninterrupted run (each epoch's data order, augmentation and dropout depend on (seed, epoch))."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = """
import sys
from tcpnet.config import load_config
from tcpnet.engine.train import train
train(load_config(None, sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from tcpnet.tools.synthetic import make_synthetic_dataset
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, seed=0, num_classes=4, train_per_class=4, val_per_class=2,
                           num_frames=16, size=64, progress=False)
    return root


def _overrides(data: Path, out: Path) -> list:
    return ["model.name=tcp_tiny", "model.num_segments=4", "model.kwargs.dim=16", "model.kwargs.mid_channels=32",
            "model.dropout=0.5", f"data.root={data}", f"data.train_list={data}/train.txt",
            f"data.val_list={data}/val.txt", "data.num_workers=1", "data.flip=true", "data.crop_size=48",
            "data.scale_size=56", "train.epochs=2", "train.batch_size=4", "train.lr=0.02", "train.lr_steps=[1]",
            "train.warmup_epochs=0.5", "train.log_every=1", "test.batch_size=8", f"output_dir={out}", "seed=3",
            "device=cpu"]


def _start(args):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONHASHSEED": "0"})


def _train_records(out: Path):
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("extra", [[], ["train.ema_decay=0.8"]], ids=["plain", "ema"])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tiny_data, tmp_path, extra):
    ref_out, cut_out = tmp_path / "reference", tmp_path / "interrupted"
    ref = _start(_overrides(tiny_data, ref_out) + extra)
    assert ref.wait(timeout=600) == 0, ref.stdout.read().decode()[-3000:]

    # run again and SIGKILL it two iterations into the second epoch (after epoch 1's checkpoint)
    proc = _start(_overrides(tiny_data, cut_out) + extra)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if any(r["event"] == "train" and r["epoch"] == 1 and r["iter"] >= 2 for r in _train_records(cut_out)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed mid-epoch"
    assert torch.load(cut_out / "last.pt", weights_only=True)["epoch"] == 1  # killed inside epoch 2
    assert not [r for r in _train_records(cut_out) if r["event"] == "epoch" and r["epoch"] == 1]
    assert not list(cut_out.glob(".*.tmp"))  # no torn checkpoint

    # resume (automatic: output_dir holds last.pt) and finish
    resumed = _start(_overrides(tiny_data, cut_out) + extra)
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read().decode()[-3000:]

    a = torch.load(ref_out / "last.pt", weights_only=True)
    b = torch.load(cut_out / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    # tolerance 1e-6 (the brief's bound); in practice the same ops on the same machine give 0
    for k in a["state_dict"]:
        diff = (a["state_dict"][k].double() - b["state_dict"][k].double()).abs().max().item()
        assert diff <= 1e-6, (k, diff)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert (sa["momentum_buffer"] - sb["momentum_buffer"]).abs().max().item() <= 1e-6
    assert a["best_metric"] == b["best_metric"]
    if extra:  # the EMA weights continue exactly too, and ema.pt holds them as a model file
        assert set(a["ema"]) == set(b["ema"])
        for k in a["ema"]:
            assert (a["ema"][k].double() - b["ema"][k].double()).abs().max().item() <= 1e-6, k
        ema_file = torch.load(cut_out / "ema.pt", weights_only=True)
        for k, v in ema_file["state_dict"].items():
            assert torch.equal(v, b["ema"]["module." + k]), k
    # the resumed run logged a "start" record at epoch 1 and continued the epoch numbering
    starts = [r for r in _train_records(cut_out) if r["event"] == "start"]
    assert [s["start_epoch"] for s in starts] == [0, 1]
