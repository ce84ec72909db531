"""Benchmark of tcpnet.ops.isqrt_cov (forward + backward) at the TCP head's real shapes.

Compares, in one run, against (a) a straightforward re-implementation of the published MPNCOV
code (M×M centring matrix repeated per sample, Newton-Schulz backward with a per-sample Python
loop) and (b) the exact eigh square root; then the whole TCP head against a GAP
head on ResNet-50-sized features. Prints tables with medians, ratios (ours / baseline), peak
tensor memory (allocator events, see _common.peak_tensor_memory) and GFLOP/s.

    python benchmarks/covariance.py            # full run (a few minutes on 2 cores)
    python benchmarks/covariance.py --quick    # smoke run, small shapes
"""
from __future__ import annotations

import argparse
import os
import functools
import logging

import torch

from _common import format_table, machine_summary, matmul_peak_gflops, median_time, mib, peak_tensor_memory
from tcpnet.ops import isqrt_cov
from tcpnet.utils.malloc import freed_memory_retained, retain_freed_memory

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- baseline (a): published code ---
class PublishedCovpool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        b, d, h, w = x.shape
        m = h * w
        x = x.reshape(b, d, m)
        i_hat = (-1.0 / m / m) * torch.ones(m, m, device=x.device) + (1.0 / m) * torch.eye(m, m, device=x.device)
        i_hat = i_hat.view(1, m, m).repeat(b, 1, 1).type(x.dtype)
        y = x.bmm(i_hat).bmm(x.transpose(1, 2))
        ctx.save_for_backward(x, i_hat)
        ctx.shape = (b, d, h, w)
        return y

    @staticmethod
    def backward(ctx, g):
        x, i_hat = ctx.saved_tensors
        gi = g + g.transpose(1, 2)
        gi = gi.bmm(x).bmm(i_hat)
        return gi.reshape(ctx.shape)


class PublishedSqrtm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n_iter):
        b, d, _ = x.shape
        dtype = x.dtype
        i3 = 3.0 * torch.eye(d, d, device=x.device).view(1, d, d).repeat(b, 1, 1).type(dtype)
        norm_a = (1.0 / 3.0) * x.mul(i3).sum(dim=1).sum(dim=1)
        a = x.div((norm_a + 1e-5).view(b, 1, 1).expand_as(x))
        y_s = torch.zeros(b, n_iter, d, d, device=x.device).type(dtype)
        z_s = torch.eye(d, d, device=x.device).view(1, d, d).repeat(b, n_iter, 1, 1).type(dtype)
        if n_iter < 2:
            zy = 0.5 * (i3 - a)
            yzy = a.bmm(zy)
        else:
            zy = 0.5 * (i3 - a)
            y_s[:, 0] = a.bmm(zy)
            z_s[:, 0] = zy
            for i in range(1, n_iter - 1):
                zy = 0.5 * (i3 - z_s[:, i - 1].bmm(y_s[:, i - 1]))
                y_s[:, i] = y_s[:, i - 1].bmm(zy)
                z_s[:, i] = zy.bmm(z_s[:, i - 1])
            yzy = 0.5 * y_s[:, n_iter - 2].bmm(i3 - z_s[:, n_iter - 2].bmm(y_s[:, n_iter - 2]))
        y = yzy * torch.sqrt(norm_a).view(b, 1, 1).expand_as(x)
        ctx.save_for_backward(x, a, yzy, norm_a, y_s, z_s)
        ctx.n_iter = n_iter
        return y

    @staticmethod
    def backward(ctx, g):
        x, a, zy, norm_a, y_s, z_s = ctx.saved_tensors
        n_iter = ctx.n_iter
        b, d, _ = x.shape
        dtype = x.dtype
        der_post = g * torch.sqrt(norm_a).view(b, 1, 1).expand_as(x)
        der_post_aux = (g * zy).sum(dim=1).sum(dim=1).div(2 * torch.sqrt(norm_a))
        i3 = 3.0 * torch.eye(d, d, device=x.device).view(1, d, d).repeat(b, 1, 1).type(dtype)
        if n_iter < 2:
            der_ns = 0.5 * (der_post.bmm(i3 - a) - a.bmm(der_post))
        else:
            y, z = y_s[:, n_iter - 2], z_s[:, n_iter - 2]
            dldy = 0.5 * (der_post.bmm(i3 - y.bmm(z)) - z.bmm(y).bmm(der_post))
            dldz = -0.5 * y.bmm(der_post).bmm(y)
            for i in range(n_iter - 3, -1, -1):
                yz = i3 - y_s[:, i].bmm(z_s[:, i])
                zy_i = z_s[:, i].bmm(y_s[:, i])
                dldy_ = 0.5 * (dldy.bmm(yz) - z_s[:, i].bmm(dldz).bmm(z_s[:, i]) - zy_i.bmm(dldy))
                dldz_ = 0.5 * (yz.bmm(dldz) - y_s[:, i].bmm(dldy).bmm(y_s[:, i]) - dldz.bmm(zy_i))
                dldy, dldz = dldy_, dldz_
            der_ns = 0.5 * (dldy.bmm(i3 - a) - dldz - a.bmm(dldy))
        der_ns = der_ns.transpose(1, 2)
        grad = der_ns.div(norm_a.view(b, 1, 1).expand_as(x))
        grad_aux = der_ns.mul(x).sum(dim=1).sum(dim=1)
        for i in range(b):  # the published per-sample loop
            grad[i, :, :] += (der_post_aux[i] - grad_aux[i] / (norm_a[i] * norm_a[i])) * torch.ones(
                d, device=x.device
            ).diag().type(dtype)
        return grad, None


class PublishedTriuvec(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        b, d, _ = x.shape
        x = x.reshape(b, d * d)
        index = torch.ones(d, d).triu().reshape(d * d).nonzero().to(x.device)  # (K, 1), built on CPU
        y = torch.zeros(b, int(d * (d + 1) / 2), device=x.device).type(x.dtype)
        y = x[:, index]
        ctx.save_for_backward(index)
        ctx.d = d
        return y

    @staticmethod
    def backward(ctx, g):
        (index,) = ctx.saved_tensors
        b, d = g.shape[0], ctx.d
        gi = torch.zeros(b, d * d, device=g.device, dtype=g.dtype)
        gi[:, index] = g
        gi = gi.reshape(b, d, d)
        return 0.5 * (gi + gi.transpose(1, 2))


def published_isqrt_cov(x: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """Baseline (a): the published pipeline on a (B, d, T*H, W)-like input (flattened to (B, d, M, 1))."""
    b, d = x.shape[:2]
    cov = PublishedCovpool.apply(x.reshape(b, d, -1, 1))
    return PublishedTriuvec.apply(PublishedSqrtm.apply(cov, iters)).reshape(b, -1)


# ----------------------------------------------------------------------------------- harness ---
def fwd_bwd(fn, x: torch.Tensor) -> None:
    out = fn(x)
    out.backward(torch.ones_like(out))


def clear_grads(*tensors: torch.Tensor) -> None:
    for t in tensors:
        t.grad = None


def ours_flops(b: int, d: int, m: int, iters: int) -> float:
    """Useful flops of isqrt_cov fwd+bwd: 2 covariance bmm (2·d²·M each) + Newton-Schulz matmuls
    (2·d³ each: 3·iters − 3 forward, 7·(iters − 2) + 7 backward for iters >= 2)."""
    ns = (3 * iters - 3) + (7 * (iters - 2) + 7)
    return b * (2 * 2 * d * d * m + ns * 2 * d**3)


def bench_pooling(cases, repeats: int, peak: float, published_max_b: int, clock: str) -> str:
    rows = []
    for b, d, t, hw in cases:
        m = t * hw * hw
        g = torch.Generator().manual_seed(0)
        x = torch.relu(torch.randn(b, d, m, generator=g)).requires_grad_(True)
        impls = {
            "ours (ns)": functools.partial(isqrt_cov, iters=3),
            "(a) published": functools.partial(published_isqrt_cov, iters=3),
            "(b) eigh": functools.partial(isqrt_cov, method="eigh"),
        }
        res = {}
        for name, fn in impls.items():
            if name == "(a) published" and b > published_max_b:
                continue
            run = functools.partial(fwd_bwd, fn, x)
            reset = functools.partial(clear_grads, x)
            t_med, _ = median_time(lambda: (reset(), run()), repeats=repeats, warmup=1, clock=clock)
            mem = peak_tensor_memory(run, setup=reset)
            res[name] = (t_med, mem)
            logger.info("B=%d d=%d T=%d M=%d %s: %.4fs, %s MiB", b, d, t, m, name, t_med, mib(mem))
        t0, m0 = res["ours (ns)"]
        gf = ours_flops(b, d, m, 3) / t0 / 1e9
        for name, (tt, mm) in res.items():
            is_ours = name == "ours (ns)"
            rows.append([
                f"B={b} d={d} T={t} M={m}", name, f"{tt * 1e3:.1f}", mib(mm),
                "" if is_ours else f"{t0 / tt:.3f}", "" if is_ours else f"{tt / t0:.1f}x",
                "" if is_ours else f"{m0 / mm:.3f}", "" if is_ours else f"{mm / m0:.1f}x",
                f"{gf:.1f} ({100 * gf / peak:.0f}%)" if is_ours else "",
            ])
    return format_table(
        ["shape", "impl", "fwd+bwd ms", "peak MiB", "time ours/impl", "speed-up", "mem ours/impl",
         "mem saving", "ours GFLOP/s (% of matmul peak)"],
        rows,
    )


def fwd_bwd_flops(run) -> int:
    """FLOPs of one call of ``run`` (forward + backward) as torch's FlopCounterMode counts them
    (matmuls and convolutions: the floor no implementation can go under)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def bench_heads(b: int, t: int, hw: int, repeats: int, clock: str, peak: float) -> str:
    try:
        from tcpnet.heads import GAPHead, TCPHead
    except ImportError as err:  # the heads are written separately; report instead of failing
        return f"(heads not importable: {err}; head comparison skipped)"
    x0 = torch.randn(b * t, 2048, hw, hw, generator=torch.Generator().manual_seed(1)).relu_()
    rows, base = [], None
    for layout in ("NCHW", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = x0.contiguous(memory_format=fmt).requires_grad_(True)
        for name, head in [("GAP", GAPHead(2048)), ("TCP", TCPHead(2048, num_segments=t))]:
            head.train()
            for p in head.parameters():  # 4-D weights in the features' layout, as tcpnet train does
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=fmt)
            reset = functools.partial(clear_grads, x, *head.parameters())

            def run(head=head, x=x):
                out = head(x, t)
                out.backward(torch.ones_like(out))

            t_med, _ = median_time(lambda: (reset(), run()), repeats=repeats, warmup=1, clock=clock)
            mem = peak_tensor_memory(run, setup=reset)
            reset()
            floor = fwd_bwd_flops(run) / (peak * 1e9)  # seconds at the measured matmul peak
            base = t_med if name == "GAP" else base
            rows.append([f"(B*T,2048,{hw},{hw}) B={b} T={t}", layout, name, f"{t_med * 1e3:.1f}", mib(mem),
                         f"{t_med / base:.1f}", f"{floor * 1e3:.1f}", f"{t_med / floor:.1f}" if floor else "-"])
    return format_table(["features", "layout", "head", "fwd+bwd ms", "peak MiB", "time / GAP", "FLOP floor ms",
                         "time / floor"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, 2 repetitions (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 5, quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall: elapsed time; cpu: process CPU time (use with --threads 1 on a shared machine)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()  # as tcpnet train does: no page faults per call (tcpnet.utils.malloc)
    torch.manual_seed(0)
    repeats = args.repeats or (2 if args.quick else 5)
    if args.quick:
        cases = [(2, 32, 4, 7), (2, 64, 8, 7)]
        head_shape = (1, 8, 7)
        published_max_b = 2
    else:
        cases = [(8, 128, 8, 14), (8, 128, 16, 14), (32, 128, 8, 14), (32, 128, 16, 14)]
        head_shape = (8, 8, 14)
        published_max_b = 32
    peak = matmul_peak_gflops(1024 if args.quick else 2048, clock=args.clock)
    print(f"machine: {machine_summary()}; load average {os.getloadavg()[0]:.1f} at start; "
          f"freed memory retained: {freed_memory_retained()}")
    print(
        f"measured fp32 matmul peak: {peak:.1f} GFLOP/s; {args.clock} clock, median of {repeats} runs "
        "after 1 warm-up; float32"
    )
    print("peak MiB = peak tensor bytes allocated during one fwd+bwd (profiler allocator events), input excluded\n")
    print(bench_pooling(cases, repeats, peak, published_max_b, args.clock))
    print()
    print(bench_heads(*head_shape, repeats=repeats, clock=args.clock, peak=peak))
    print("FLOP floor = forward+backward FLOPs (torch FlopCounterMode: matmuls, convolutions) at the measured "
          "matmul peak")


if __name__ == "__main__":
    main()
