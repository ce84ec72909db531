"""Loop features as hooks: gradient-norm logging and label smoothing are one file each in
tcpnet/engine/hooks/, chosen from the config; each test fails without its hook."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tcpnet.config import TrainConfig, load_config
from tcpnet.engine.hooks import list_hooks
from tcpnet.engine.hooks.grad_norm import GradNormLog
from tcpnet.engine.hooks.label_smoothing import LabelSmoothing
from tcpnet.engine.loop import LoopContext, train_one_epoch
from tcpnet.engine.optim import build_optimizer
from tcpnet.engine.state import TrainState
from tcpnet.engine.stats import CORE_STATS, RunningStats
from tcpnet.engine.train import train
from tcpnet.models import build_model

CPU = torch.device("cpu")
LEGACY_DATA = Path(__file__).parent / "data" / "legacy_run" / "data"


def _setup(hooks, n_batches=3):
    torch.manual_seed(0)
    model = build_model("tcp_tiny", num_classes=3, num_segments=4, dim=8, mid_channels=16, dropout=0.0)
    opt = build_optimizer(model, lr=0.05)
    state = TrainState(model=model, optimizer=opt, scaler=torch.amp.GradScaler("cpu", enabled=False),
                       stats=RunningStats([*CORE_STATS, *(s for h in hooks for s in h.stats)]))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 4, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g))
               for _ in range(n_batches)]
    return model, opt, state, batches


def _ctx(model, n, hooks, criterion=None, records=None):
    tc = TrainConfig(epochs=1, lr=0.05, log_every=1, clip_grad_norm=None, lr_schedule="step", lr_steps=[])
    return LoopContext(model=model, criterion=criterion or nn.CrossEntropyLoss(), device=CPU, train=tc,
                       iters_per_epoch=n, hooks=hooks, log=None if records is None else records.append)


def test_gradient_norm_logging_records_the_mean_norm_before_the_step():
    hooks = [GradNormLog()]
    model, opt, state, batches = _setup(hooks)
    norms = []
    opt.register_step_pre_hook(lambda *_: norms.append(
        float(nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))))
    records = []
    train_one_epoch(state, batches, _ctx(model, len(batches), hooks, records=records))
    assert len(norms) == 3 and all(n > 0 for n in norms)
    for i, rec in enumerate(records):  # running mean over the epoch's steps so far
        assert rec["grad_norm"] == pytest.approx(sum(norms[: i + 1]) / (i + 1), rel=1e-5)
    assert state.stats.read()["grad_norm_steps"] == 3


def test_label_smoothing_hook_smooths_the_loss():
    eps = 0.3
    hooks = [LabelSmoothing(eps)]
    model, opt, state, batches = _setup(hooks, n_batches=1)
    with torch.no_grad():
        model.fc.weight.normal_(0, 1.0)  # confident logits: the published N(0, 0.001) init is near uniform
    run = SimpleNamespace(multi_label=False, criterion=nn.CrossEntropyLoss())
    hooks[0].on_fit_start(run)
    seen = []
    model.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    train_one_epoch(state, batches, _ctx(model, 1, hooks, criterion=run.criterion))
    logits, targets = seen[0], batches[0][1]
    expected = nn.functional.cross_entropy(logits, targets, label_smoothing=eps)
    plain = nn.functional.cross_entropy(logits, targets)
    got = state.stats.read()["loss_sum"] / 4
    assert got == pytest.approx(float(expected), rel=1e-6) and abs(got - float(plain)) > 1e-2
    with pytest.raises(ValueError, match="single-label"):
        LabelSmoothing(eps).on_fit_start(SimpleNamespace(multi_label=True))


def test_hooks_are_chosen_from_the_config_and_logged(tmp_path):
    """train() builds the registered hooks that the config turns on (and lists them in the log)."""
    assert {"ema", "mixup", "clip_grad", "nonfinite", "stop", "grad_norm", "label_smoothing"} <= set(list_hooks())
    data = tmp_path / "data"
    shutil.copytree(LEGACY_DATA, data)
    cfg = load_config(None, [
        "model.name=tcp_tiny", "model.num_segments=4", "model.kwargs.dim=8", "model.kwargs.mid_channels=16",
        f"data.root={data}", f"data.train_list={data}/train.txt", "data.num_workers=0", "data.crop_size=32",
        "data.scale_size=32", "train.epochs=1", "train.batch_size=2", "train.lr=0.02", "train.log_every=1",
        "train.log_grad_norm=true", "train.label_smoothing=0.1", "train.ema_decay=0.9", f"output_dir={tmp_path / 'o'}",
        "device=cpu"])
    res = train(cfg)
    recs = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    start = recs[0]
    assert start["event"] == "start"
    assert {"grad_norm", "label_smoothing", "ema", "clip_grad", "nonfinite", "stop"} <= set(start["hooks"])
    assert "mixup" not in start["hooks"]
    assert all(r["grad_norm"] > 0 for r in recs if r["event"] == "train")
    assert res["final"]["grad_norm"] > 0 and res["final"]["grad_clipped"] >= 0
