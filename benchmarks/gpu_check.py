"""The check to run on a new CUDA machine, printing one table per part:

1. the training step of GAP (``tsn_r50``) and TCP (``tcp_tsn_r50``) in fp32, bf16 and fp16
   (autocast; fp16 with a GradScaler), NCHW and channels_last: seconds per step, the TCP/GAP
   ratio, finite losses, and the TCP representation under autocast against fp32 (the
   covariance head runs its matrix square root in fp32 whatever the autocast dtype);
2. DDP with NCCL over every visible GPU: a few TCP steps with different data per rank, then
   every rank's parameters compared bitwise (DDP must keep them identical), and the step time;
3. ``tcpnet train`` itself under torchrun on all GPUs for one epoch of the synthetic set.

    python benchmarks/gpu_check.py                       # on a CUDA machine (about 5 minutes)
    python benchmarks/gpu_check.py --device cpu --quick  # smoke run of this script (gloo, tiny shapes)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from _common import format_table, interleaved_times, machine_summary
from tcpnet.engine.optim import build_optimizer
from tcpnet.models import build_model

AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(name: str, segments: int, size: int, batch: int, amp: str, channels_last: bool,
              device: torch.device, num_classes: int = 400):
    """(step closure, model, input): one forward + CE + backward + SGD step under ``amp``."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, num_segments=segments, last_stride=1).to(device)
    if channels_last:  # 4-D weights only, as tcpnet.engine.train does (TCP's temporal conv is a Conv3d)
        for p in model.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    model.train()
    opt = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    x = torch.randn(batch, 3, segments, size, size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    losses = []

    def step():
        ctx = torch.autocast(device.type, dtype=AMP[amp]) if AMP[amp] else contextlib.nullcontext()
        with ctx:
            loss = F.cross_entropy(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        _sync(device)

    step.losses = losses
    return step, model, x


def precision_rows(args, device: torch.device) -> list:
    """The TCP head under autocast against fp32 on the same fp32 backbone features (the head's
    own precision: covariance and matrix square root are kept in fp32), and the whole model's
    representation (what the classifier sees; with random weights the backbone's own rounding
    dominates). Train-mode BN, no dropout: with untrained running statistics an eval-mode
    ResNet-50's activations overflow fp16 before they reach the head."""
    rows = []
    torch.manual_seed(0)
    model = build_model("tcp_tsn_r50", num_classes=400, num_segments=args.segments, dropout=0.0).to(device).train()
    x = torch.randn(2, 3, args.segments, args.size, args.size, device=device)
    feats = {}
    model.head.register_forward_pre_hook(lambda _m, inp: feats.__setitem__("maps", inp[0].detach().float()))
    model.fc.register_forward_pre_hook(lambda _m, inp: feats.__setitem__("rep", inp[0].detach().float()))

    def rel(a: torch.Tensor, b: torch.Tensor) -> str:
        return f"{((a - b).norm() / b.norm()).item():.2e}"

    with torch.no_grad():
        model(x)
        maps, rep = feats["maps"], feats["rep"]
        for amp in ("bf16", "fp16"):
            with torch.autocast(device.type, dtype=AMP[amp]):
                head_out = model.head(maps, model.num_segments).float()
                model(x)
            finite = bool(torch.isfinite(head_out).all() and torch.isfinite(feats["rep"]).all())
            rows.append([amp, rel(head_out, rep), rel(feats["rep"], rep), "yes" if finite else "NO"])
    return rows


def step_rows(args, device: torch.device) -> list:
    rows = []
    dtypes = ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16")  # CPU fp16: emulated, slow
    for amp in dtypes:
        for cl in (False, True):
            built = {n: make_step(n, args.segments, args.size, args.batch, amp, cl, device)
                     for n in ("tsn_r50", "tcp_tsn_r50")}
            med, _ = interleaved_times({n: b[0] for n, b in built.items()}, args.repeats, args.warmup)
            finite = all(bool(torch.isfinite(torch.stack(b[0].losses)).all()) for b in built.values())
            gap, tcp = med["tsn_r50"], med["tcp_tsn_r50"]
            rows.append([amp, "channels_last" if cl else "NCHW", f"{gap * 1e3:.1f}", f"{tcp * 1e3:.1f}",
                         f"{args.batch / tcp:.1f}", f"{tcp / gap:.3f}", "yes" if finite else "NO"])
            print(format_table(["dtype", "layout", "GAP ms", "TCP ms", "TCP clips/s", "TCP/GAP", "finite"],
                               rows[-1:]).splitlines()[-1], flush=True)
            del built
    return rows


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = build_model("tcp_tsn_r50", num_classes=400, num_segments=args.segments, last_stride=1).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if cuda else None)
    opt = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(100 + rank)  # different data per rank
    x = torch.randn(args.batch, 3, args.segments, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, 400, (args.batch,), generator=g).to(device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
            loss = F.cross_entropy(ddp(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)

    import time
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        identical = all(torch.equal(gathered[0], t) for t in gathered[1:])
        Path(result).write_text(json.dumps({"identical": identical, "step_s": sorted(times)[len(times) // 2]}))
    dist.destroy_process_group()


def ddp_rows(args) -> list:
    world = torch.cuda.device_count() if args.device == "cuda" else 2
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "ddp.json")
        mp.spawn(_ddp_worker, args=(world, port, args, result), nprocs=world, join=True)
        r = json.loads(Path(result).read_text())
    backend = "nccl" if args.device == "cuda" else "gloo"
    return [[backend, world, f"{r['step_s'] * 1e3:.1f}", f"{world * args.batch / r['step_s']:.1f}",
             "yes" if r["identical"] else "NO"]]


def train_cli_row(args) -> list:
    """``tcpnet train`` under torchrun on all devices, one epoch of a small synthetic set."""
    from tcpnet.tools.synthetic import make_synthetic_dataset
    world = torch.cuda.device_count() if args.device == "cuda" else 2
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_synthetic_dataset(data, seed=0, num_classes=8, train_per_class=8, val_per_class=4, num_frames=16,
                               size=64, progress=False)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "-m", "tcpnet", "train", "demo/tcp", f"data.root={data}", f"data.train_list={data}/train.txt",
               f"data.val_list={data}/val.txt", f"data.class_names={data}/classes.txt", "train.epochs=1",
               f"device={args.device}", f"output_dir={tmp}/run", "train.amp=" + ("bf16" if args.device == "cuda"
                                                                                else "none")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        ok = proc.returncode == 0 and (Path(tmp) / "run" / "last.pt").is_file()
        if not ok:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
    return [[world, "ok" if ok else f"FAILED (exit {proc.returncode})"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 repeat: checks that the script runs")
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (use --device cpu --quick to smoke-test the script)")
    if args.quick:
        args.segments, args.size, args.batch, args.repeats, args.warmup = 4, 64, 2, 1, 1
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"# {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        print(f"# {machine_summary()}")
    print(f"# {args.segments}x{args.size}^2 clips, batch {args.batch} per device, median of {args.repeats} steps\n")

    print("## training step (GAP tsn_r50 vs TCP tcp_tsn_r50, last stride 1)")
    headers = ["dtype", "layout", "GAP ms", "TCP ms", "TCP clips/s", "TCP/GAP", "finite"]
    print(format_table(headers, step_rows(args, device)))
    print("\n## low precision vs fp32: the TCP representation fed to the classifier")
    print(format_table(["autocast", "head rel. error", "model rel. error", "finite"], precision_rows(args, device)))
    print("\n## DDP (bf16 on CUDA): parameters identical on every rank after the steps")
    print(format_table(["backend", "ranks", "step ms", "clips/s (all ranks)", "identical"], ddp_rows(args)))
    print("\n## tcpnet train under torchrun (one epoch of the synthetic set)")
    print(format_table(["ranks", "result"], train_cli_row(args)))


if __name__ == "__main__":
    main()
