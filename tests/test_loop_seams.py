"""The training loop's seams: EMA of the weights, mixup/cutmix, device-side running sums, and the
one checkpoint I/O path for training checkpoints."""
import os
import pickle

import pytest
import torch
from torch import nn

from tcpnet.checkpoints import CheckpointError
from tcpnet.config import TrainConfig
from tcpnet.engine.checkpoint import load_training_checkpoint, save_training_checkpoint
from tcpnet.engine.mixup import MixupCutmix
from tcpnet.engine.optim import build_optimizer
from tcpnet.engine.hooks.ema import EMAUpdate
from tcpnet.engine.hooks.mixup import Mixup
from tcpnet.engine.loop import LoopContext, train_one_epoch
from tcpnet.engine.state import TrainState
from tcpnet.engine.stats import CORE_STATS, RunningStats
from tcpnet.engine.train import build_ema
from tcpnet.models import build_model

CPU = torch.device("cpu")


def _model():
    torch.manual_seed(0)
    return build_model("tcp_tiny", num_classes=3, num_segments=4, dim=8, mid_channels=16, dropout=0.0)


def _batches(n=3, b=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(b, 3, 4, 32, 32, generator=g), torch.randint(0, 3, (b,), generator=g)) for _ in range(n)]


def _run(model, batches, opt, ema=None, batch_transform=None, criterion=None):
    """One epoch of the loop on a bare TrainState, with the EMA / mixup hooks when given; returns
    the epoch's running statistics by name."""
    tc = TrainConfig(epochs=1, lr=0.05, log_every=2, clip_grad_norm=None, lr_schedule="step", lr_steps=[])
    state = TrainState(model=model, optimizer=opt, scaler=torch.amp.GradScaler("cpu", enabled=False),
                       stats=RunningStats(CORE_STATS), ema=ema)
    hooks = ([EMAUpdate(ema, model)] if ema is not None else []) + \
        ([Mixup(batch_transform)] if batch_transform is not None else [])
    ctx = LoopContext(model=model, criterion=criterion or nn.CrossEntropyLoss(), device=CPU, train=tc,
                      iters_per_epoch=len(batches), hooks=hooks)
    assert train_one_epoch(state, batches, ctx) is None and state.iteration == len(batches)
    return state.stats.read()


def test_ema_is_the_exponential_average_of_the_weights_after_each_step():
    model = _model()
    opt = build_optimizer(model, lr=0.05)
    snapshots = []
    opt.register_step_post_hook(
        lambda *_: snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()}))
    ema = build_ema(model, 0.9)
    _run(model, _batches(), opt, ema=ema)
    assert len(snapshots) == 3
    expected = snapshots[0]  # the first update copies the weights
    for snap in snapshots[1:]:
        expected = {n: 0.9 * expected[n] + 0.1 * snap[n] for n in expected}
    for n, p in ema.module.named_parameters():
        torch.testing.assert_close(p, expected[n], rtol=1e-5, atol=1e-6, msg=n)
    # the EMA lags the trained weights: it is not a copy of them
    assert not torch.allclose(ema.module.fc.weight, model.fc.weight)
    # BN running statistics are averaged too
    assert not torch.equal(ema.module.backbone.bn1.running_mean, model.backbone.bn1.running_mean)


def test_running_sums_count_every_clip_and_hit():
    model = _model()
    opt = build_optimizer(model, lr=0.05)
    seen = []

    def criterion(logits, targets):
        seen.append((logits.detach(), targets))
        return nn.functional.cross_entropy(logits, targets)

    batches = _batches(n=3, b=4)
    sums = _run(model, batches, opt, criterion=criterion)
    hits = sum(int((lg.argmax(1) == t).sum()) for lg, t in seen)
    losses = sum(float(nn.functional.cross_entropy(lg, t)) * len(t) for lg, t in seen)
    assert sums["clips"] == 12 and sums["top1_hits"] == hits and sums["top5_hits"] == 12  # 3 classes < 5
    assert sums["loss_sum"] == pytest.approx(losses, rel=1e-5)


def test_mixup_formula_and_soft_targets():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 8, 8)
    y = torch.tensor([0, 1, 2, 1])
    mixed, soft = MixupCutmix(3, mixup_alpha=0.4)(x, y, lam=0.7)
    torch.testing.assert_close(mixed, 0.7 * x + 0.3 * x.flip(0))
    assert torch.allclose(soft.sum(1), torch.ones(4))
    assert soft[0].tolist() == pytest.approx([0.7, 0.3, 0.0])   # y[0]=0 mixed with y[3]=1
    assert soft[1].tolist() == pytest.approx([0.0, 0.7, 0.3])   # y[1]=1 mixed with y[2]=2


def test_cutmix_pastes_one_box_in_every_frame_and_corrects_lambda():
    torch.manual_seed(3)
    x = torch.arange(2 * 3 * 4 * 16 * 16, dtype=torch.float32).view(2, 3, 4, 16, 16)
    y = torch.tensor([0, 1])
    mixed, soft = MixupCutmix(2, cutmix_alpha=1.0)(x, y, lam=0.75)
    from_other = (mixed != x).any(dim=(0, 1, 2))          # (H, W) pixels taken from the other clip
    assert from_other.any()
    rows, cols = from_other.nonzero(as_tuple=True)
    box = from_other[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all()                                        # one rectangle, the same in every frame
    lam = 1 - from_other.sum().item() / (16 * 16)
    assert soft[0].tolist() == pytest.approx([lam, 1 - lam])
    torch.testing.assert_close(mixed[0][..., from_other], x[1][..., from_other])


def test_training_with_mixup_uses_soft_targets_and_hard_labels_for_accuracy():
    model = _model()
    opt = build_optimizer(model, lr=0.05)
    seen = []

    def criterion(logits, targets):
        seen.append((logits.detach(), targets))
        return torch.sum(-targets * logits.log_softmax(-1), dim=-1).mean()

    batches = _batches(n=2, b=4)
    sums = _run(model, batches, opt, criterion=criterion, batch_transform=MixupCutmix(3, mixup_alpha=0.4))
    assert all(t.shape == (4, 3) for _, t in seen)           # soft targets reach the loss
    assert all(torch.allclose(t.sum(1), torch.ones(4)) for _, t in seen)
    assert any(((t > 0) & (t < 1)).any() for _, t in seen)   # and they are really mixed
    hard_hits = sum(int((lg.argmax(1) == y).sum()) for (lg, _), (_, y) in zip(seen, batches))
    assert sums["top1_hits"] == hard_hits


def test_mixup_refuses_multi_label_targets():
    with pytest.raises(ValueError, match="single-label"):
        MixupCutmix(3, mixup_alpha=0.2)(torch.zeros(2, 3, 2, 4, 4), torch.zeros(2, 3))


# ------------------------------------------------------------------ training checkpoint I/O
def _good_checkpoint(path):
    model = _model()
    opt = build_optimizer(model, lr=0.1)
    save_training_checkpoint({"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}, path)
    return path


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['TCPNET_PAYLOAD_MARK']}",))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "text", "malicious", "not_training"])
def test_bad_training_checkpoint_is_one_clear_checkpoint_error(tmp_path, monkeypatch, damage):
    path = tmp_path / "last.pt"
    mark = tmp_path / "payload_ran"
    if damage == "truncated":
        data = _good_checkpoint(path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "text":
        path.write_text("this is not a checkpoint\n")
    elif damage == "malicious":
        monkeypatch.setenv("TCPNET_PAYLOAD_MARK", str(mark))
        with open(path, "wb") as f:
            pickle.dump({"state_dict": _Payload(), "optimizer": {}, "epoch": 1}, f)
    else:
        torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError) as err:
        load_training_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert not mark.exists()


def test_training_checkpoints_are_written_atomically_without_leftovers(tmp_path):
    path = _good_checkpoint(tmp_path / "last.pt")
    assert load_training_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
