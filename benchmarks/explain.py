"""Cost of `tcpnet explain` against `tcpnet predict` on the same clip, in one run.

(a) Model only, one 8x224^2 clip (1x1 view), eval mode: ``explain_clip`` (forward with hooks,
    gradient of the class logit back to the last backbone stage, TSA/TCA read-out, frame
    importance: T modified clips, head only for TSN backbones) vs the forward ``predict`` runs
    (``model(x)`` under ``no_grad``) -> ratio (target <= 3x).
(b) From a video file: ``explain_video`` (decode, transform, explain; no rendering) vs
    ``predict_videos`` (decode, transform, forward) -> ratio.
(c) Rendering alone: the contact sheet (PNG) and the MP4 of the explanation, seconds.

Timings are interleaved (A B A B ...) so load from other processes falls on both alike; median
(and min) of ``--repeats`` runs after warm-up. The load average before and after is printed:
on a shared machine, quote it with the numbers.

    python benchmarks/explain.py                 # tcp_tsn_r50, 7 repeats
    python benchmarks/explain.py --repeats 3     # short run
    python benchmarks/explain.py --quick         # smoke run (tcp_tiny at 112 px)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import format_table, interleaved_times, machine_summary, make_video  # noqa: E402

from tcpnet.apps.explain import explain_clip, explain_video, write_explanation  # noqa: E402
from tcpnet.apps.predict import predict_videos  # noqa: E402
from tcpnet.models import build_model  # noqa: E402


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tcp_tsn_r50")
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-video", action="store_true", help="skip (b), the from-file comparison")
    ap.add_argument("--quick", action="store_true", help="tcp_tiny at 112 px, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.model, args.repeats = "tcp_tiny", 3
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=400, num_segments=args.segments).eval()
    size = model.input_config.crop_size
    x = torch.randn(1, 3, args.segments, size, size)
    print(f"# {machine_summary()}")
    print(f"# {args.model}, {args.segments}x{size}^2, 1 clip; load average before: {load()}")

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    rows = []
    med, best = interleaved_times({"predict": forward, "explain": lambda: explain_clip(model, x)},
                                  args.repeats, args.warmup)
    rows.append(["(a) model: explain_clip / forward", f"{med['explain']:.3f}", f"{med['predict']:.3f}",
                 f"{med['explain'] / med['predict']:.2f}x", f"{best['explain'] / best['predict']:.2f}x"])

    with tempfile.TemporaryDirectory() as tmp:
        expl = explain_clip(model, x)
        if not args.no_video:
            video = str(make_video(Path(tmp) / "clip.mp4"))
            med, best = interleaved_times({"predict": lambda: predict_videos(model, [video]),
                                           "explain": lambda: explain_video(model, video)}, args.repeats, args.warmup)
            rows.append(["(b) file: explain_video / predict_videos", f"{med['explain']:.3f}", f"{med['predict']:.3f}",
                         f"{med['explain'] / med['predict']:.2f}x", f"{best['explain'] / best['predict']:.2f}x"])
            expl = explain_video(model, video)
        render = []
        for _ in range(max(1, args.repeats // 2)):
            t0 = time.perf_counter()
            write_explanation(expl, tmp, "sheet")
            render.append(time.perf_counter() - t0)
        rows.append(["(c) rendering: sheet PNG + MP4", f"{statistics.median(render):.3f}", "-", "-", "-"])
    print(format_table(["what", "explain s", "predict s", "ratio (median)", "ratio (min)"], rows))
    print(f"# load average after: {load()}  (1, 5, 15 min; {os.cpu_count()} logical CPUs)")


if __name__ == "__main__":
    main()
