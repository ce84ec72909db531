"""Small helpers shared by the benchmark scripts: timing (median after warm-up), peak tensor
memory, the machine's measured matmul throughput and a plain-text table."""
from __future__ import annotations

import gc
import platform
import statistics
import time
from typing import Callable, Dict, List, Sequence

import torch
from torch.profiler import ProfilerActivity, profile


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def median_time(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1, clock: str = "wall"
) -> tuple[float, list[float]]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; return (median seconds, all).

    ``clock="wall"``: elapsed time. ``clock="cpu"``: CPU time of this process (all its threads);
    with one thread that is the compute time, far less sensitive to other processes sharing
    the cores than wall time (which counts the time spent descheduled).
    """
    if clock not in CLOCKS:
        raise ValueError(f"median_time: clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = now()
        fn()
        times.append(now() - t0)
    return statistics.median(times), times


def peak_tensor_memory(fn: Callable[[], object], setup: Callable[[], object] | None = None) -> int:
    """Peak bytes of tensor storage allocated *during* ``fn`` above what was live before it.

    Method: the PyTorch profiler's allocator events (``profile_memory=True``), every allocation
    (+bytes) and free (−bytes) of the CPU/CUDA allocator in time order; the peak of their running
    sum. This counts exactly the tensor memory a computation needs (temporaries, saved tensors,
    outputs, gradients) and nothing of the interpreter or of allocator caching. Tensors that
    ``fn`` returns or leaves alive count too. Frees of tensors that existed before would offset
    the sum, so ``fn`` must not release older tensors: do that in ``setup`` (e.g. clearing
    ``.grad``), which runs before recording starts. Run it apart from timing (profiling is slow).
    """
    if setup is not None:
        setup()
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def matmul_peak_gflops(
    n: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32, clock: str = "wall"
) -> float:
    """Best measured throughput of one large square matmul (GFLOP/s), the machine's practical
    peak: the fastest of ``repeats`` runs (a median would let frequency dips lower the peak)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    _, times = median_time(lambda: a @ b, repeats=repeats, warmup=2, clock=clock)
    return 2 * n**3 / min(times) / 1e9


def machine_summary() -> str:
    """One line naming the machine: CPU model, threads, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain-text (Markdown-compatible) table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f}"


def interleaved_times(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int, count_faults: bool = False):
    """Median and min seconds per function, timing them in turns (A B A B ...) so that load from
    other processes on a shared machine falls on all of them alike. With ``count_faults``, also the
    median number of minor page faults per call (memory the call touched that the kernel had to map
    in; Unix only), as a third dict."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    faults: Dict[str, List[int]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            f0 = _minor_faults() if count_faults else 0
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            if count_faults:
                faults[name].append(_minor_faults() - f0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    if count_faults:
        return med, best, {k: statistics.median(v) for k, v in faults.items()}
    return med, best


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def make_video(path, num_frames: int = 64, height: int = 256, width: int = 340, fps: int = 25):
    """A moving colour gradient with noise (not trivially compressible), H.264, GOP 16."""
    import numpy as np

    from tcpnet.data.writer import write_video

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        base = np.stack([(xx * 0.7 + 3 * t) % 256, (yy * 0.9 + 2 * t) % 256, ((xx + yy) * 0.5 + 5 * t) % 256], -1)
        frames[t] = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    return write_video(path, frames, fps=fps, crf=23, gop=16, preset="veryfast")
