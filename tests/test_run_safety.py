"""Training runs that never report a wrong number or lose a file (issue-15 engine items):
non-finite BatchNorm statistics, an epoch of skipped steps, the EMA's counters, a mid-epoch
resume with another world size or train list, a new run in an old run's output_dir, two runs at
once, a stale ema.pt, an output path that is a folder, and paths that only moved."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tcpnet.checkpoints import CheckpointError
from tcpnet.config import ConfigError, TrainConfig, load_config
from tcpnet.engine.ema import build_ema
from tcpnet.engine.fit import nonfinite_tensors
from tcpnet.engine.hooks.nonfinite import NonFiniteError, NonFiniteGuard
from tcpnet.engine.loop import LoopContext, train_one_epoch
from tcpnet.engine.optim import build_optimizer
from tcpnet.engine.resume import _check_position
from tcpnet.engine.state import DataPosition, TrainState
from tcpnet.engine.stats import CORE_STATS, RunningStats
from tcpnet.engine.train import train
from tcpnet.models import build_model

DATA = Path(__file__).parent / "data" / "legacy_run" / "data"  # 8 tiny videos, 2 classes
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("d") / "data"
    shutil.copytree(DATA, root)
    return root


def _cfg(data: Path, out: Path, *extra: str):
    return load_config(None, [
        "model.name=tcp_tiny", "model.num_segments=4", "model.kwargs.dim=8", "model.kwargs.mid_channels=16",
        f"data.root={data}", f"data.train_list={data}/train.txt", f"data.val_list={data}/val.txt",
        "data.num_workers=0", "data.crop_size=32", "data.scale_size=32", "train.epochs=1", "train.batch_size=2",
        "train.lr=0.02", "train.log_every=2", "test.batch_size=2", f"output_dir={out}", "seed=1", "device=cpu",
        *extra])


def _tiny():
    torch.manual_seed(0)
    return build_model("tcp_tiny", num_classes=3, num_segments=4, dim=8, mid_channels=16, dropout=0.0)


def _loop(model, batches, hooks, tc=None):
    opt = build_optimizer(model, lr=0.05)
    state = TrainState(model=model, optimizer=opt, scaler=torch.amp.GradScaler("cpu", enabled=False),
                       stats=RunningStats([*CORE_STATS, *(s for h in hooks for s in h.stats)]))
    tc = tc or TrainConfig(epochs=1, lr=0.05, log_every=1, clip_grad_norm=None, lr_steps=[])
    ctx = LoopContext(model=model, criterion=nn.CrossEntropyLoss(), device=CPU, train=tc,
                      iters_per_epoch=len(batches), hooks=hooks)
    train_one_epoch(state, batches, ctx)
    return state


def _batches(n, nan_at=()):
    g = torch.Generator().manual_seed(2)
    out = []
    for i in range(n):
        x = torch.randn(2, 3, 4, 32, 32, generator=g)
        if i in nan_at:
            x[0, 0, 0, 0, 0] = float("nan")
        out.append((x, torch.randint(0, 3, (2,), generator=g)))
    return out


# ------------------------------------------------------------------ silent wrong results
def test_nonfinite_batchnorm_statistics_count_like_weights():
    model = _tiny()
    assert nonfinite_tensors(model) == []
    model.backbone.bn1.running_var[0] = float("nan")
    assert nonfinite_tensors(model) == ["backbone.bn1.running_var"]


def test_a_skipped_step_leaves_no_nan_in_the_batchnorm_statistics():
    """skip mode: the forward pass of a NaN batch updated the BN statistics; they are restored."""
    model = _tiny()
    guard = NonFiniteGuard("skip", model)
    state = _loop(model, _batches(3, nan_at={1}), [guard])
    assert state.stats.read()["nonfinite_steps"] == 1 and state.stats.read()["clips"] == 4
    assert nonfinite_tensors(model) == []


def test_an_epoch_whose_every_step_was_skipped_is_an_error_not_loss_zero():
    model = _tiny()
    guard = NonFiniteGuard("skip", model)
    state = _loop(model, _batches(2, nan_at={0, 1}), [guard])
    totals = state.stats.read()
    with pytest.raises(NonFiniteError, match=r"every one of its 2 steps .* skipped"):
        guard.on_epoch_end(totals, {})


def test_ema_copies_integer_buffers_instead_of_averaging_them():
    model = _tiny()
    ema = build_ema(model, 0.5)
    from tcpnet.engine.hooks.ema import EMAUpdate
    _loop(model, _batches(20), [EMAUpdate(ema, model)])
    assert int(model.backbone.bn1.num_batches_tracked) == 20
    assert int(ema.module.backbone.bn1.num_batches_tracked) == 20  # averaged, it read 10


def _fake_run(ckpt, position, force=False):
    return SimpleNamespace(ckpt=ckpt, resume_path="last.pt", is_main=True,
                           cfg=SimpleNamespace(train=SimpleNamespace(force_resume=force)))


@pytest.mark.parametrize("saved,change", [
    ({"data_position": {"world_size": 2, "batch_per_rank": 2, "num_videos": 8, "iters_per_epoch": 2}},
     "world_size: checkpoint 2, now 1"),
    ({"rng": [{}, {}], "schedule": {"iters_per_epoch": 2}}, "world_size: checkpoint 2, now 1"),  # old files
    ({"data_position": {"world_size": 1, "batch_per_rank": 4, "num_videos": 12, "iters_per_epoch": 3}},
     "num_videos: checkpoint 12, now 8"),
])
def test_a_mid_epoch_resume_needs_the_same_data_position(saved, change):
    state = SimpleNamespace(position=DataPosition(1, 4, 8, 2), epoch=0, iteration=1)
    with pytest.raises(CheckpointError, match=change + r".*train\.force_resume=true to restart epoch 1"):
        _check_position(_fake_run(saved, state.position), state)
    _check_position(_fake_run(saved, state.position, force=True), state)
    assert state.iteration == 0  # restarted from the epoch's first iteration, said in a warning
    state.iteration = 0  # at an epoch boundary a changed position is allowed
    _check_position(_fake_run(saved, state.position), state)


def test_world_size_change_through_train(data, tmp_path):
    """A real mid-epoch checkpoint whose recorded world size differs is refused before training."""
    out = tmp_path / "run"
    train(_cfg(data, out, "train.epochs=1"))
    last = torch.load(out / "last.pt", weights_only=True)
    last["iter"], last["epoch"] = 1, 0
    last["epoch_stats"] = [{"loss_sum": 1.0, "clips": 2.0}] * 2
    last["data_position"]["world_size"] = 2
    torch.save(last, out / "last.pt")
    with pytest.raises(CheckpointError, match="world_size: checkpoint 2, now 1"):
        train(_cfg(data, out, "train.epochs=1"))


# ------------------------------------------------------------------ files lost or overwritten
def test_a_new_run_refuses_an_output_dir_with_another_runs_checkpoints(data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(data, out))
    (out / "last.pt").unlink()  # best.pt and metrics.jsonl stay: a run without its last.pt
    best = (out / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"output_dir holds best\.pt.*another output_dir"):
        train(_cfg(data, out))
    assert (out / "best.pt").read_bytes() == best
    train(_cfg(data, tmp_path / "other"))  # a fresh dir is fine
    with pytest.raises(ConfigError, match=r"output_dir holds last\.pt, best\.pt"):  # not resuming on purpose
        train(_cfg(data, tmp_path / "other", "train.auto_resume=false"))


def test_two_runs_in_one_output_dir_at_once_are_refused(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from tcpnet.engine.checkpoint import OutputLock; lock = OutputLock.acquire(sys.argv[1]); "
        "print('locked', flush=True); time.sleep(60)"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"output_dir is in use by another tcpnet run \(pid {holder.pid}\)"):
            train(_cfg(data, out))
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert train(_cfg(data, out))["final"]["epoch"] == 0  # the lock went with the process


def test_a_stale_ema_checkpoint_is_repaired_from_last(data, tmp_path):
    """A kill between best.pt and ema.pt at the end of the last epoch left an older ema.pt; the
    next start (nothing to train) rewrites it from last.pt's EMA."""
    out = tmp_path / "run"
    train(_cfg(data, out, "train.ema_decay=0.5"))
    stale = (out / "ema.pt").read_bytes()
    train(_cfg(data, out, "train.ema_decay=0.5", "train.epochs=2"))
    (out / "ema.pt").write_bytes(stale)  # epoch 1's EMA under epoch 2's last.pt
    again = train(_cfg(data, out, "train.ema_decay=0.5", "train.epochs=2"))
    assert again["nothing_to_do"]
    ema = torch.load(out / "ema.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    assert ema["epoch"] == 2
    assert all(torch.equal(ema["state_dict"][k], last["ema"][f"module.{k}"]) for k in ema["state_dict"])


def test_an_output_path_that_is_a_folder_is_found_before_training(data, tmp_path):
    out = tmp_path / "run"
    (out / "best.pt").mkdir(parents=True)
    with pytest.raises(OSError, match=r"best\.pt in output_dir is not a regular file"):
        train(_cfg(data, out))
    assert not (out / "metrics.jsonl").exists()  # no epoch was spent


def test_paths_that_only_moved_do_not_block_a_resume(data, tmp_path, monkeypatch):
    """Resume from a moved output_dir, with data.root spelled relative instead of absolute."""
    out = tmp_path / "run"
    train(_cfg(data, out))
    moved = tmp_path / "moved"
    shutil.move(str(out), str(moved))
    monkeypatch.chdir(data.parent)
    rel = os.path.relpath(data)
    res = train(_cfg(rel, moved, "train.epochs=2", f"data.train_list={rel}/train.txt",
                     f"data.val_list={rel}/val.txt"))
    assert res["resumed_from"] == str(moved / "last.pt") and res["final"]["epoch"] == 1


def test_a_failed_best_repair_names_best_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """Full disk while best.pt is restored from last.pt: the error names best.pt (not last.pt), the
    old best.pt stays, and no temporary file is left behind."""
    import errno

    from tcpnet.engine import checkpoint as ckpt_io

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"epoch": 2, "iter": 0, "best_epoch": 1}, out / "last.pt")
    torch.save({"epoch": 1}, out / "best.pt")
    old = (out / "best.pt").read_bytes()

    def full_disk(src, dst):
        Path(dst).write_bytes(b"half")  # a partial copy, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_io.shutil, "copyfile", full_disk)
    with pytest.raises(CheckpointError, match=r"best\.pt: could not restore it from last\.pt \(No space left "
                                              r"on device\); the old best\.pt is intact"):
        ckpt_io.repair_best(out, torch.load(out / "last.pt", weights_only=True))
    assert (out / "best.pt").read_bytes() == old
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt"]


def test_frozen_backbone_probing_trains_only_the_head(data, tmp_path):
    """train.freeze_backbone: the backbone's weights and BatchNorm statistics end as they began,
    the head and classifier learn, and the optimizer holds no backbone parameter."""
    out = tmp_path / "run"
    torch.manual_seed(1)
    before = build_model("tcp_tiny", num_classes=2, num_segments=4, dim=8, mid_channels=16).state_dict()
    res = train(_cfg(data, out, "train.freeze_backbone=true", "train.epochs=2"))
    after = res["model"].state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # BN buffers included
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert not torch.equal(before["head.layer_reduce1.weight"], after["head.layer_reduce1.weight"])
    ckpt = torch.load(out / "last.pt", weights_only=True)
    in_optimizer = sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])
    assert in_optimizer == sum(1 for k in after if k.startswith(("head.", "fc.")) and "running" not in k
                               and "num_batches" not in k)
