"""``tcpnet stream`` latency on a live 25 fps stream: per model, the latency p50/p95 (arrival of a
window's last frame -> its result), the windows emitted and skipped and the frames dropped.

A separate process (this script with ``--serve``) encodes a synthetic 320x240 H.264 MPEG-TS stream
at real-time pace and serves it on a local TCP port, as a camera or an encoder would; the stream is
read through ``tcpnet.apps.stream.run_stream`` (the code behind the command). Models have random
weights (latency does not depend on them) at their own crop and T.

    python benchmarks/stream_latency.py                        # tcp_tiny and tcp_tsn_r50, 20 s each
    python benchmarks/stream_latency.py --models tcp_tiny --seconds 5
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import av
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import format_table, machine_summary  # noqa: E402

from tcpnet.apps.stream import StreamOptions, run_stream  # noqa: E402
from tcpnet.models import build_model  # noqa: E402

FPS, WIDTH, HEIGHT = 25, 320, 240


def serve(seconds: float) -> None:
    """Listen on a free local port (printed), then stream ``seconds`` of video to the first client."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    print(server.getsockname()[1], flush=True)
    conn, _ = server.accept()
    with conn, conn.makefile("wb", buffering=0) as f:
        out = av.open(f, "w", format="mpegts", buffer_size=4096, options={"flush_packets": "1"})
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "tune": "zerolatency"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
        start = time.monotonic()
        for i in range(int(seconds * FPS)):
            img = np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, (xx + yy) % 256], -1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            time.sleep(max(0.0, start + i / FPS - time.monotonic()))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        out.close()


def measure(name: str, seconds: float, window: float, stride: float) -> list:
    model = build_model(name, num_classes=400).eval()
    feeder = subprocess.Popen([sys.executable, __file__, "--serve", str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(feeder.stdout.readline())
        stats = run_stream(f"tcp://127.0.0.1:{port}", model, StreamOptions(window=window, stride=stride, timeout=30))
    finally:
        feeder.wait(timeout=60)
    s = stats.summary()
    cfg = model.input_config
    return [name, f"{model.num_segments}x{cfg.crop_size}^2", s["latency_p50_ms"], s["latency_p95_ms"],
            s["latency_max_ms"], f"{s['windows']} / {s['windows'] + s['windows_skipped']}",
            f"{s['dropped']} / {s['sampled']}", s["received"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tcp_tiny,tcp_tsn_r50")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--stride", type=float, default=0.5)
    p.add_argument("--serve", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve is not None:
        return serve(args.serve)
    print(machine_summary(), f"torch threads {torch.get_num_threads()}")
    print(f"{WIDTH}x{HEIGHT} H.264 at {FPS} fps over local TCP, {args.seconds:g} s; window {args.window:g} s, "
          f"stride {args.stride:g} s")
    rows = [measure(n, args.seconds, args.window, args.stride) for n in args.models.split(",")]
    print(format_table(["model", "T x crop", "p50 ms", "p95 ms", "max ms", "windows emitted / due",
                        "frames dropped / sampled", "frames received"], rows))


if __name__ == "__main__":
    main()
