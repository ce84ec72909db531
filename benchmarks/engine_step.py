"""The training engine's cost per step: one step of the published recipe (forward, loss,
backward, gradient clipping at 20, SGD) run bare, through today's engine
(``tcpnet.engine.loop.train_one_epoch`` with the default hooks: clipping, the non-finite guard,
stop signals) and through the engine before the TrainState refactor (``train_one_epoch`` of
commit ``--old-rev``, loaded from git), for TSN-R50 (GAP) and TCP-TSN-R50 in the same run.
Prints s/step (median and min of ``--repeats``, interleaved) and each engine's TCP/GAP ratio.
Target: today's engine no slower per step than the old one (ratio ~1.00) and TCP/GAP unchanged.

    python benchmarks/engine_step.py                 # 8x112^2 batch 4, fp32 (~6 min on 2 cores)
    python benchmarks/engine_step.py --quick         # smoke run: 4x64^2 batch 2
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from _common import format_table, interleaved_times, machine_summary
from tcpnet.config import TrainConfig
from tcpnet.engine.hooks.clip_grad import ClipGradNorm
from tcpnet.engine.hooks.nonfinite import NonFiniteGuard
from tcpnet.engine.loop import LoopContext, train_one_epoch
from tcpnet.engine.optim import build_optimizer
from tcpnet.engine.state import TrainState
from tcpnet.engine.stats import CORE_STATS, RunningStats
from tcpnet.models import build_model
from tcpnet.utils.malloc import retain_freed_memory

REPO = Path(__file__).resolve().parents[1]


def old_engine(rev: str):
    """The ``tcpnet.engine.train`` module of commit ``rev`` (its train_one_epoch), or None."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:src/tcpnet/engine/train.py"],
                             check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"# old engine {rev} not available ({e}); its columns are left out", file=sys.stderr)
        return None
    path = Path(tempfile.mkdtemp()) / "old_train.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setup(name: str, t: int, size: int, batch: int):
    torch.manual_seed(0)
    model = build_model(name, num_classes=400, num_segments=t, last_stride=1)
    opt = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4)
    batches = [(torch.randn(batch, 3, t, size, size), torch.randint(0, 400, (batch,)))]
    tc = TrainConfig(epochs=1, lr=0.01, lr_steps=[], log_every=20, clip_grad_norm=20.0)
    return model, opt, batches, tc


def bare_step(name, t, size, batch):
    model, opt, batches, _ = _setup(name, t, size, batch)
    x, y = batches[0]

    def step():
        model.train()
        loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 20.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def new_engine_step(name, t, size, batch):
    model, opt, batches, tc = _setup(name, t, size, batch)
    hooks = [ClipGradNorm(20.0), NonFiniteGuard("stop", model)]
    state = TrainState(model=model, optimizer=opt, scaler=torch.amp.GradScaler("cpu", enabled=False),
                       stats=RunningStats([*CORE_STATS, "clipped_steps", "nonfinite_steps"]))
    ctx = LoopContext(model=model, criterion=nn.CrossEntropyLoss(), device=torch.device("cpu"), train=tc,
                      iters_per_epoch=1, hooks=hooks)

    def step():
        state.iteration = 0
        train_one_epoch(state, batches, ctx)
    return step


def old_engine_step(module, name, t, size, batch):
    model, opt, batches, tc = _setup(name, t, size, batch)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def step():
        module.train_one_epoch(model, batches, opt, criterion=nn.CrossEntropyLoss(), scaler=scaler,
                               device=torch.device("cpu"), epoch=0, iters_per_epoch=1, tc=tc)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per function first (the first "
                        "covariance calls of a process are slow: issue 15 #24)")
    parser.add_argument("--old-rev", default="e402db3", help="commit of the engine before TrainState")
    args = parser.parse_args()
    retain_freed_memory()
    t, size, batch = (4, 64, 2) if args.quick else (8, 112, 4)
    repeats = 2 if args.quick else args.repeats
    old = old_engine(args.old_rev)
    print(f"# engine step, {machine_summary()}; {t}x{size}^2 batch {batch} fp32; median (min) of {repeats}")
    steps = {}
    for name in ("tsn_r50", "tcp_tsn_r50"):
        steps[f"{name} bare"] = bare_step(name, t, size, batch)
        steps[f"{name} new"] = new_engine_step(name, t, size, batch)
        if old is not None:
            steps[f"{name} old"] = old_engine_step(old, name, t, size, batch)
    med, best = interleaved_times(steps, repeats, warmup=args.warmup)
    rows = []
    for kind in ("bare", "new", "old"):
        if f"tsn_r50 {kind}" not in med:
            continue
        gap, tcp = med[f"tsn_r50 {kind}"], med[f"tcp_tsn_r50 {kind}"]
        rows.append([kind, f"{gap:.3f} ({best[f'tsn_r50 {kind}']:.3f})", f"{tcp:.3f} ({best[f'tcp_tsn_r50 {kind}']:.3f})",
                     f"{tcp / gap:.3f}", f"{gap / med['tsn_r50 bare']:.3f}", f"{tcp / med['tcp_tsn_r50 bare']:.3f}"])
    print(format_table(["step", "GAP s/step", "TCP s/step", "TCP/GAP", "GAP / bare", "TCP / bare"], rows))
    if old is not None:
        for name in ("tsn_r50", "tcp_tsn_r50"):
            print(f"# {name}: new engine / old engine = {med[f'{name} new'] / med[f'{name} old']:.3f} (median)")


if __name__ == "__main__":
    main()
