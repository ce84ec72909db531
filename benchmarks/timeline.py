"""`tcpnet timeline` against a naive loop of per-window predictions, on the same windows, in one run.

A 60 s 340x256 H.264 video at 30 fps (moving colour gradient with noise, written with PyAV) is
labelled with 2 s windows every 0.5 s (117 windows of T=8 frames):

- timeline: ``tcpnet.apps.timeline.timeline_video`` (one sequential decode of the frames the
  windows need, each frame through the backbone once, windows scored in batches of 8 on the
  cached maps; thumbnails kept; no files written);
- naive: for every window, ``load_clip(video, window.frames)`` (a seek and decode per window),
  the test pipeline's 1x1 view and ``model(clip)``, as ``tcpnet predict`` would do on a cut of
  the video.

Printed per model: backbone passes per distinct frame, wall seconds of each (median of
``--repeats``, timeline and naive interleaved), the speed-up and the real-time factor (video
seconds / wall seconds), and the largest logit difference between the two (float32 rounding).

    python benchmarks/timeline.py                       # tcp_tsn_r50 at 8x224^2 (1 run) and tcp_tiny (3 runs)
    python benchmarks/timeline.py --quick               # tcp_tiny on a 10 s video
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import format_table, machine_summary  # noqa: E402

from tcpnet.apps.timeline import TimelineOptions, timeline_video  # noqa: E402
from tcpnet.apps.windows import Window  # noqa: E402
from tcpnet.data import load_clip  # noqa: E402
from tcpnet.data.transforms import CenterCrop, ResizeShorterSide, to_float  # noqa: E402
from tcpnet.models import build_model  # noqa: E402


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def write_long_video(path: Path, seconds: float, fps: int = 30, height: int = 256, width: int = 340) -> Path:
    """Moving colour gradient with noise and a drifting disc, H.264 (x264 veryfast, crf 23, GOP 60),
    one frame in memory at a time."""
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 60
        for t in range(int(seconds * fps)):
            base = np.stack([(xx * 0.7 + 3 * t) % 256, (yy * 0.9 + 2 * t) % 256, ((xx + yy) * 0.5 + 5 * t) % 256], -1)
            cx, cy = width * (0.5 + 0.4 * np.sin(t / 40)), height * (0.5 + 0.3 * np.cos(t / 55))
            base[(xx - cx) ** 2 + (yy - cy) ** 2 < 30 ** 2] = (230, 40, 40)
            frame = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@torch.no_grad()
def naive(model: torch.nn.Module, video: str, windows: List[Window]) -> torch.Tensor:
    """One load_clip and one model(clip) per window (the predict pipeline's 1x1 view)."""
    ic = model.input_config
    out = []
    for w in windows:
        clip = to_float(CenterCrop(ic.crop_size)(ResizeShorterSide(ic.scale_size)(load_clip(video, w.frames))), ic)
        out.append(model(clip.unsqueeze(0)))
    return torch.cat(out)


def measure(name: str, video: str, seconds: float, repeats: int) -> List[str]:
    """One table row: the timeline and the naive loop on ``video``, interleaved ``repeats`` times."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=400).eval()
    options = TimelineOptions(window=2.0, stride=0.5)
    times: Dict[str, List[float]] = {"timeline": [], "naive": []}
    tl = ref = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        tl = timeline_video(model, video, options)
        times["timeline"].append(time.perf_counter() - t0)
        assert tl.error is None, tl.error
        t0 = time.perf_counter()
        ref = naive(model, video, tl.windows)
        times["naive"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    t = tl.num_segments
    naive_passes = t * len(tl.windows) / tl.distinct_frames
    diff = float((tl.logits - ref).abs().max() / ref.abs().max().clamp_min(1.0))
    size = model.input_config.crop_size
    return [f"{name} {t}x{size}^2", str(len(tl.windows)), f"{tl.passes_per_frame:.2f}", f"{naive_passes:.2f}",
            f"{med['timeline']:.1f}", f"{med['naive']:.1f}", f"**{med['naive'] / med['timeline']:.2f}x**",
            f"{seconds / med['timeline']:.2f}", f"{seconds / med['naive']:.2f}", f"{diff:.1e}", str(repeats)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--models", default="tcp_tsn_r50:1,tcp_tiny:3", help="name:repeats,...")
    ap.add_argument("--quick", action="store_true", help="tcp_tiny only, on a 10 s video")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.models = 10.0, "tcp_tiny:2"
    print(f"# {machine_summary()}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        video = str(write_long_video(Path(tmp) / "long.mp4", args.seconds))
        print(f"# {args.seconds:g} s video, 340x256 at 30 fps, written in {time.perf_counter() - t0:.0f} s; "
              f"2 s windows every 0.5 s; load average before: {load()}")
        rows = []
        for item in args.models.split(","):
            name, _, reps = item.partition(":")
            rows.append(measure(name, video, args.seconds, int(reps or 1)))
    print(format_table(["model", "windows", "backbone passes/frame timeline", "naive", "timeline s", "naive s",
                        "speed-up", "real time x timeline", "naive", "max logit diff (rel)", "runs"], rows))
    print(f"# load average after: {load()}  (1, 5, 15 min; {os.cpu_count()} logical CPUs)")


if __name__ == "__main__":
    main()
