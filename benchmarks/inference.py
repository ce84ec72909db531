"""Inference throughput on CPU: the model alone and the whole `tcpnet predict` pipeline.

(a) Model forward, eval mode, no grad, 1x1 view (8x224^2 clips): TCP TSN-R50 vs GAP TSN-R50 (both
    last stride 1, i.e. equal backbones) at batch 1 and 4, fp32 and bf16 autocast -> clips/s and
    the TCP/GAP time ratio. Optionally (``--onnx``) TCP in ONNX Runtime vs PyTorch.
(b) Pipeline on a generated 10 s video (340x256 H.264, 25 fps, 250 frames, keyframe every 16):
    decode + transform alone (test sampling, resize, crops, normalise) vs
    decode + transform + forward (``tcpnet.apps.predict.predict_videos``), for 1x1 and 3x10 views
    -> videos/s and the share of time spent before the model.

Median (and min) of ``--repeats`` runs after warm-up.

    python benchmarks/inference.py            # full run (several minutes on 2 shared cores)
    python benchmarks/inference.py --quick    # smoke run (tcp_tiny/tsn_tiny, short video)
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import format_table, interleaved_times, machine_summary, make_video  # noqa: E402

from tcpnet.apps.predict import build_predict_dataset, predict_videos  # noqa: E402
from tcpnet.models import build_model  # noqa: E402


def forward_rows(names, segments, size, batches, repeats, warmup, onnx_dir=None):
    rows = []
    models = {n: build_model(n, num_classes=400, num_segments=segments, last_stride=1).eval() for n in names}
    for batch in batches:
        x = torch.randn(batch, 3, segments, size, size)
        for bf16 in (False, True):
            def fwd(m, bf16=bf16, x=x):
                amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
                with torch.no_grad(), amp:
                    return m(x)
            med, best = interleaved_times({n: functools.partial(fwd, m) for n, m in models.items()}, repeats, warmup)
            gap, tcp = (med[names[0]], best[names[0]]), (med[names[1]], best[names[1]])
            rows.append([f"{segments}x{size}^2", batch, "bf16" if bf16 else "fp32",
                         f"{gap[0]:.3f} ({gap[1]:.3f})", f"{batch / gap[0]:.2f}", f"{tcp[0]:.3f} ({tcp[1]:.3f})",
                         f"{batch / tcp[0]:.2f}", f"{tcp[0] / gap[0]:.3f}", f"{tcp[1] / gap[1]:.3f}"])
            print(rows[-1], flush=True)
    ort_rows = []
    if onnx_dir is not None:
        import onnxruntime as ort

        from tcpnet.apps.export import export_onnx
        tcp = models[names[1]]
        path = export_onnx(tcp, Path(onnx_dir) / "tcp.onnx", exporter="torchscript")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch in batches:
            x = torch.randn(batch, 3, segments, size, size)
            xn = x.numpy()

            def torch_fwd(x=x):
                with torch.no_grad():
                    return tcp(x)
            med, best = interleaved_times({"torch": torch_fwd, "ort": lambda xn=xn: sess.run(None, {"clips": xn})},
                                          repeats, warmup)
            ort_rows.append([batch, f"{med['torch']:.3f} ({best['torch']:.3f})",
                             f"{med['ort']:.3f} ({best['ort']:.3f})", f"{med['ort'] / med['torch']:.3f}"])
    return rows, ort_rows


def pipeline_rows(model, video: Path, view_list, repeats, warmup):
    rows = []
    for views in view_list:
        ds = build_predict_dataset(model, [str(video)], views)
        ds.num_frames(0)  # probe once (cached per process, as in a dataset)
        rng = np.random.default_rng(0)
        med, best = interleaved_times({
            "load": lambda: ds.load(0, rng),
            "full": lambda: predict_videos(model, [str(video)], views=views, topk=5)}, repeats, warmup)
        rows.append([views, f"{med['load']:.3f} ({best['load']:.3f})", f"{med['full']:.3f} ({best['full']:.3f})",
                     f"{1 / med['full']:.2f}", f"{100 * med['load'] / med['full']:.0f}%"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime on the TCP model")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        names, segments, size, batches = ("tsn_tiny", "tcp_tiny"), 8, 112, (1,)
        frames, height, width, view_list, repeats = 50, 128, 170, ("1x1", "3x2"), 2
    else:
        names, segments, size, batches = ("tsn_r50", "tcp_tsn_r50"), 8, 224, (1, 4)
        frames, height, width, view_list, repeats = 250, 256, 340, ("1x1", "3x10"), args.repeats
    print(f"# inference, {machine_summary()}; median (min) of {repeats} runs after {args.warmup} warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        fwd, ort_rows = forward_rows(names, segments, size, batches, repeats, args.warmup,
                                     onnx_dir=tmp if args.onnx else None)
        video = make_video(Path(tmp) / "clip.mp4", frames, height, width)
        tcp = build_model(names[1], num_classes=400, num_segments=segments).eval()
        pipe = pipeline_rows(tcp, video, view_list, repeats, args.warmup)
    print()
    print(f"(a) model forward, {names[0]} (GAP) vs {names[1]} (TCP), seconds per batch")
    print(format_table(["input", "batch", "dtype", "GAP s", "GAP clips/s", "TCP s", "TCP clips/s",
                        "TCP/GAP median", "TCP/GAP min"], fwd))
    if ort_rows:
        print(f"\n{names[1]} fp32: PyTorch vs ONNX Runtime (CPUExecutionProvider), seconds per batch")
        print(format_table(["batch", "PyTorch s", "ORT s", "ORT/PyTorch"], ort_rows))
    print(f"\n(b) predict pipeline on a {frames / 25:.0f} s {width}x{height} H.264 video, {names[1]}, fp32")
    print(format_table(["views", "decode+transform s", "predict s", "videos/s", "decode share"], pipe))


if __name__ == "__main__":
    main()
