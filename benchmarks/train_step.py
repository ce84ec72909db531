"""Training-step throughput: TCP TSN-R50 vs GAP TSN-R50 (same backbone, last stage stride 1).

One step = forward + cross-entropy + backward + SGD (momentum, weight decay) on a random clip
batch, the published parameter groups (tcpnet.engine.optim.build_optimizer). Settings: fp32 /
bf16 autocast, NCHW / channels_last. Prints clips/s (median of ``--repeats`` steps after
warm-up), minor page faults per step and the TCP/GAP time ratio per setting (target: TCP adds
<= 5 % over GAP). Freed tensor memory is kept in the process as ``tcpnet train`` does
(tcpnet.utils.malloc); ``--system-malloc`` measures glibc's default instead.

    python benchmarks/train_step.py            # 8x224^2 batch 2 and 8x112^2 batch 4 (~10 min on 2 cores)
    python benchmarks/train_step.py --quick    # smoke run: 4x64^2, one setting
    python benchmarks/train_step.py --system-malloc   # glibc default: freed activations unmapped every step
"""
from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

from _common import format_table, interleaved_times, machine_summary
from tcpnet.engine.optim import build_optimizer
from tcpnet.models import build_model
from tcpnet.utils.malloc import freed_memory_retained, retain_freed_memory


def make_step(name: str, segments: int, size: int, batch: int, bf16: bool, channels_last: bool,
              device: torch.device, num_classes: int = 400):
    """A closure running one training step of model ``name`` (train mode) on fixed random data."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, num_segments=segments, last_stride=1).to(device)
    model.train()
    if channels_last:  # 4-D weights only, as tcpnet.engine.train does (TCP's temporal conv is a Conv3d)
        for p in model.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    opt = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, segments, size, size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)

    def step():
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with amp:
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny input, one setting, 2 repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--shape", action="append", default=None, metavar="TxSIZExBATCH",
                        help="run only these inputs, e.g. --shape 8x112x4 (repeatable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's thresholds as they are (tcpnet train: retain_freed_memory=false)")
    args = parser.parse_args()
    if not args.system_malloc:
        retain_freed_memory()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.quick:
        shapes = [(4, 64, 2)]
        settings = [(False, False)]
        repeats, warmup = 2, 1
    else:
        shapes = [(8, 224, 2), (8, 112, 4)]  # (T, size, batch)
        settings = [(False, False), (False, True), (True, False), (True, True)]  # (bf16, channels_last)
        repeats, warmup = args.repeats, args.warmup
    if args.shape:
        shapes = [tuple(int(v) for v in sh.lower().split("x")) for sh in args.shape]
    print(f"# train step (forward+backward+SGD), {machine_summary()}")
    print(f"# device {device}; median (and min) of {repeats} steps after {warmup} warm-up step(s), GAP and TCP "
          "steps interleaved; both models ResNet-50 with last stride 1")
    print(f"# freed tensor memory retained in the process: {freed_memory_retained()}")
    headers = ["input", "batch", "dtype", "layout", "GAP s/step", "GAP clips/s", "TCP s/step", "TCP clips/s",
               "faults/step GAP", "faults/step TCP", "TCP/GAP median", "TCP/GAP min"]
    rows = []
    for t, size, batch in shapes:
        for bf16, cl in settings:
            steps = {name: make_step(name, t, size, batch, bf16, cl, device) for name in ("tsn_r50", "tcp_tsn_r50")}
            med, best, faults = interleaved_times(steps, repeats, warmup, count_faults=True)
            del steps
            gap, tcp = med["tsn_r50"], med["tcp_tsn_r50"]
            rows.append([f"{t}x{size}^2", batch, "bf16" if bf16 else "fp32", "channels_last" if cl else "NCHW",
                         f"{gap:.3f} ({best['tsn_r50']:.3f})", f"{batch / gap:.2f}",
                         f"{tcp:.3f} ({best['tcp_tsn_r50']:.3f})", f"{batch / tcp:.2f}",
                         f"{faults['tsn_r50']:.0f}", f"{faults['tcp_tsn_r50']:.0f}", f"{tcp / gap:.3f}",
                         f"{best['tcp_tsn_r50'] / best['tsn_r50']:.3f}"])
            print(format_table(headers, rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
