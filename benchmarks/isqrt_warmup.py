"""Why the first calls of ``isqrt_cov`` in a process are slower than the steady state, per call.

Each variant runs in fresh processes (one thread, so ``time.thread_time`` measures this process's
compute and kernel time, not other processes' load) and prints the median over ``--processes`` of
each call's time, minor page faults and kernel (sys) time:

* ``isqrt fwd+bwd``: B=8, d=128, M=3136 (TCP-R50 at 8x56^2 maps), forward + backward;
  ``plain`` (glibc defaults) vs ``retain`` (``retain_freed_memory()``, what train/test/predict
  use), ``tiny warm-up`` (a 2x8x16 call first: initialises MKL, OpenMP and autograd, not memory)
  and ``bmm only`` (the covariance product alone: what a BLAS's one-time set-up costs);
* ``model forward``: what one ``tcpnet predict`` clip pays, ``tcp_tsn_r50`` at 8x112^2, no grad.

The ratio first / steady (median of calls 6-10) is printed for every variant.

    python benchmarks/isqrt_warmup.py [--processes 5]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import format_table, machine_summary  # noqa: E402

CALLS = 10
VARIANTS = ("isqrt:plain", "isqrt:retain", "isqrt:tiny-warm-up", "bmm:plain", "model:plain", "model:retain")


def _workload(kind: str, tiny_warm_up: bool):
    """The timed call of a variant (built after the process's set-up)."""
    import torch

    from tcpnet.ops import isqrt_cov

    x0 = torch.rand(8, 128, 3136, generator=torch.Generator().manual_seed(0))
    if tiny_warm_up:
        isqrt_cov(torch.rand(2, 8, 16).requires_grad_()).sum().backward()
    if kind == "bmm":
        xt = x0.transpose(1, 2).contiguous()
        return lambda: torch.bmm(x0, xt)
    if kind == "model":
        from tcpnet.models import build_model

        model = build_model("tcp_tsn_r50", num_classes=400, num_segments=8).eval()
        clip = torch.randn(1, 3, 8, 112, 112)
        return lambda: model(clip).detach()

    def step():
        x = x0.clone().requires_grad_()
        isqrt_cov(x).sum().backward()
    return step


def child(variant: str) -> None:
    """One process: CALLS timed calls of ``variant``; prints [ms, faults, sys ms] per call as JSON."""
    import torch

    torch.set_num_threads(1)
    kind, _, setup = variant.partition(":")
    if setup == "retain":
        from tcpnet.utils.malloc import retain_freed_memory

        retain_freed_memory()
    fn = _workload(kind, setup == "tiny-warm-up")
    rows = []
    with torch.set_grad_enabled(kind == "isqrt"):
        for _ in range(CALLS):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.thread_time()
            fn()
            t1, r1 = time.thread_time(), resource.getrusage(resource.RUSAGE_SELF)
            rows.append([(t1 - t0) * 1e3, r1.ru_minflt - r0.ru_minflt, (r1.ru_stime - r0.ru_stime) * 1e3])
    print(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5)
    args = parser.parse_args()
    print(machine_summary())
    table = []
    for variant in VARIANTS:
        runs = []
        for _ in range(args.processes):
            proc = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True, text=True,
                                  check=True)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        med = [[statistics.median(run[i][k] for run in runs) for k in range(3)] for i in range(CALLS)]
        steady = statistics.median(m[0] for m in med[5:])
        table.append([variant, " ".join(f"{m[0]:.1f}" for m in med[:5]), f"{steady:.1f}",
                      f"{med[0][0] / steady:.2f}", " ".join(f"{m[1]:.0f}" for m in med[:5]),
                      " ".join(f"{m[2]:.1f}" for m in med[:5])])
    print(format_table(["variant", "calls 1-5 (ms)", "steady (ms)", "first/steady", "faults, calls 1-5",
                        "sys ms, calls 1-5"], table))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
