"""train(cfg) end to end on a tiny synthetic dataset: files written, numbers finite, resume-able."""
import json
import math
from pathlib import Path

import pytest
import torch

from tcpnet.config import load_config
from tcpnet.engine.train import train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """4 classes x 4 training / 3 validation videos of 16 frames at 64x64 (real H.264 mp4)."""
    from tcpnet.tools.synthetic import make_synthetic_dataset
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, seed=0, num_classes=4, train_per_class=4, val_per_class=3,
                           num_frames=16, size=64, progress=False)
    return root


def tiny_overrides(data: Path, out: Path, *extra: str) -> list:
    return ["model.name=tcp_tiny", "model.num_segments=4", "model.kwargs.dim=16", "model.kwargs.mid_channels=32",
            f"data.root={data}", f"data.train_list={data}/train.txt", f"data.val_list={data}/val.txt",
            f"data.class_names={data}/classes.txt", "data.num_workers=0", "data.flip=false",
            "data.crop_size=48", "data.scale_size=56", "train.epochs=2", "train.batch_size=4", "train.lr=0.01",
            "train.lr_steps=[1]", "train.log_every=1", "test.batch_size=6", f"output_dir={out}", "seed=0",
            "device=cpu", *extra]


def test_train_writes_everything(tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(tiny_data, out))
    result = train(cfg)
    for name in ("last.pt", "best.pt", "metrics.jsonl", "config.yaml", "curves.png"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(out / "config.yaml").model.num_classes == 4  # resolved value saved
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    for r in epochs:
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
        assert r["val_num_videos"] == 12 and r["train_clips"] == 16 and r["bad_items"] == 0
    steps = [r for r in records if r["event"] == "train"]
    assert len(steps) == 8 and steps[-1]["step"] == 8
    # lr steps at epoch 1 (x0.1); the logged base lr follows the schedule
    assert epochs[0]["lr"] == pytest.approx(0.01) and epochs[1]["lr"] == pytest.approx(0.001)

    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["format"] == "tcpnet-model" and ckpt["model_name"] == "tcp_tiny" and ckpt["epoch"] == 2
    assert ckpt["num_classes"] == 4 and ckpt["class_names"] == ["move_right", "move_left", "grow", "shrink"]
    assert ckpt["input_config"]["crop_size"] == 48
    assert [g["name"] for g in ckpt["optimizer"]["param_groups"]][-1] == "lr10_bias"
    model = result["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k]), k
    assert result["best_metric"] == max(r["val_top1"] for r in epochs)

    # the checkpoint rebuilds as a model
    from tcpnet.models import build_model
    m = build_model(ckpt["model_name"], **ckpt["model_kwargs"])
    m.load_state_dict(ckpt["state_dict"])

    # a finished run resumes to a no-op (auto-resume from last.pt: nothing left to do)
    again = train(cfg)
    assert again["final"] == {} and again["best_metric"] == result["best_metric"]


def test_train_bf16_accumulate_warmup(tiny_data, tmp_path):
    """bf16 autocast on CPU, gradient accumulation, warm-up and cosine: runs, loss finite."""
    out = tmp_path / "bf16"
    cfg = load_config(None, tiny_overrides(tiny_data, out, "train.epochs=1", "train.amp=bf16",
                                           "train.accumulate_steps=2", "train.warmup_epochs=1",
                                           "train.lr_schedule=cos", "train.channels_last=true",
                                           "train.clip_grad_norm=0.001"))
    result = train(cfg)
    rec = result["final"]
    assert math.isfinite(rec["train_loss"]) and rec["val_num_videos"] == 12
    assert rec["grad_clipped"] == 2  # 4 iterations, a step every 2; max_norm 0.001 always clips


def test_within_pair_accuracy():
    from tcpnet.apps.demo import within_pair_accuracy
    scores = torch.tensor([[0.6, 0.4, 0.0, 0.0], [0.6, 0.4, 0.0, 0.0], [0.0, 0.0, 0.1, 0.9], [0.5, 0.0, 0.2, 0.3]])
    targets = torch.tensor([0, 1, 3, 2])
    # video 0: 0.6 > 0.4 right; video 1: 0.4 < 0.6 wrong; video 2: 0.9 > 0.1 right; video 3: 0.2 < 0.3 wrong
    assert within_pair_accuracy(scores, targets) == pytest.approx(50.0)


@pytest.mark.slow
def test_quick_demo(tmp_path):
    """The demo end to end in quick mode (tiny data, 2 epochs): table, plot and results written."""
    from tcpnet.apps.demo import run_demo
    summary = run_demo(tmp_path / "demo", quick=True, overrides=["train.batch_size=8"])
    assert set(summary["results"]) == {"TCP", "GAP"}
    for r in summary["results"].values():
        assert 0 <= r["top1"] <= 100 and 0 <= r["within_pair"] <= 100 and r["val_videos"] == 32
    assert (tmp_path / "demo" / "demo.png").is_file() and (tmp_path / "demo" / "results.json").is_file()
    assert "within-pair" in summary["table"]


def test_ema_weights_are_validated_and_saved(tiny_data, tmp_path):
    from tcpnet.checkpoints import build_model_from_checkpoint

    out = tmp_path / "ema"
    result = train(load_config(None, tiny_overrides(tiny_data, out, "train.epochs=1", "train.ema_decay=0.5")))
    epoch = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x][-1]
    assert math.isfinite(epoch["val_ema_top1"]) and math.isfinite(epoch["val_ema_loss"])
    assert epoch["val_ema_loss"] != epoch["val_loss"]          # validated as its own weights
    ema_model = build_model_from_checkpoint(out / "ema.pt")
    trained = result["model"]
    assert not torch.equal(ema_model.fc.weight, trained.fc.weight)
    last = torch.load(out / "last.pt", weights_only=True)
    for k, v in ema_model.state_dict().items():
        assert torch.equal(v, last["ema"]["module." + k]), k


def test_mixup_cutmix_and_adamw_train(tiny_data, tmp_path):
    out = tmp_path / "mix"
    train(load_config(None, tiny_overrides(tiny_data, out, "train.epochs=1", "train.mixup_alpha=0.4",
                                           "train.cutmix_alpha=1.0", "train.optimizer=adamw", "train.lr=0.001")))
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert "betas" in ckpt["optimizer"]["param_groups"][0]    # AdamW state, the published groups
    assert [g["name"] for g in ckpt["optimizer"]["param_groups"]][-1] == "lr10_bias"
    epoch = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x][-1]
    assert math.isfinite(epoch["train_loss"]) and 0 <= epoch["train_top1"] <= 100


@pytest.mark.parametrize("content", [b"garbage bytes, not a checkpoint", b""], ids=["garbage", "empty"])
def test_unreadable_last_checkpoint_stops_before_training(tiny_data, tmp_path, content):
    from tcpnet.checkpoints import CheckpointError

    out = tmp_path / "bad"
    out.mkdir()
    (out / "last.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"last\.pt: not a readable PyTorch checkpoint") as err:
        train(load_config(None, tiny_overrides(tiny_data, out)))
    assert "\n" not in str(err.value)
    assert not (out / "metrics.jsonl").exists()                 # nothing was trained
