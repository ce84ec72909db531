"""``tcpnet stream`` on real streams: PyAV encodes a synthetic video (H.264 in MPEG-TS) at real-time
pace into the command's stdin and into a TCP connection; results are read as they come. A slow
model drops frames instead of drifting; a stream that stops ends with the summary (exit 0); a
source that never delivers ends with one error naming it (exit 1). Plus the hand-over queue and
the window scheduler on their own."""
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tcpnet.apps.stream import FrameQueue, Sample, Scheduler, StreamError, StreamOptions, StreamStats, run_stream
from tcpnet.apps.windows import FrameFeatureCache, WindowGrid
from tcpnet.checkpoints import save_model
from tcpnet.models import build_model

SRC = Path(__file__).resolve().parents[1] / "src"
FPS, T = 25, 4
WINDOW, STRIDE = 1.0, 0.25  # segments of 0.25 s: one window per segment


def _model():
    torch.manual_seed(0)
    m = build_model("tcp_tiny", num_classes=3, num_segments=T, dim=16, mid_channels=32).eval()
    m.input_config = dataclasses.replace(m.input_config, crop_size=64, scale_size=64)
    m.class_names = ["red", "green", "blue"]
    return m


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_model(_model(), tmp_path_factory.mktemp("stream") / "tiny.pt")


def feed(fileobj, seconds, stall=0.0):
    """Write ``seconds`` of 25 fps H.264 (zero-latency) MPEG-TS into ``fileobj`` at real-time pace;
    then, with ``stall``, keep it open that long without sending anything."""
    out = av.open(fileobj, "w", format="mpegts", buffer_size=4096, options={"flush_packets": "1"})
    stream = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "tune": "zerolatency", "g": "25"})
    stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
    start = time.monotonic()
    try:
        for i in range(int(seconds * FPS)):
            img = np.zeros((96, 128, 3), np.uint8)
            img[..., (i // FPS) % 3] = 200
            img[:, (i * 4) % 128] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            time.sleep(max(0.0, start + i / FPS - time.monotonic()))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        time.sleep(stall)
    except (OSError, ValueError, av.error.FFmpegError):
        pass  # the reader went away first
    finally:
        try:
            out.close()
        except (OSError, ValueError, av.error.FFmpegError):
            pass


def tcp_feeder(seconds, stall=0.0):
    """A local TCP server (port chosen by the OS, listening before anyone connects) that feeds the
    first client; returns (url, thread)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        with conn, conn.makefile("wb", buffering=0) as f:
            feed(f, seconds, stall)
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"tcp://127.0.0.1:{server.getsockname()[1]}", thread


def tcpnet_stream(source, checkpoint, *extra, stdin=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "tcpnet", "stream", source, "--checkpoint", str(checkpoint),
                             "--window", str(WINDOW), "--stride", str(STRIDE), "--topk", "2", "--json", *extra],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def read_results(proc):
    """JSON lines of a running ``tcpnet stream``, with the wall time each arrived; then the summary."""
    windows, summary = [], None
    for line in proc.stdout:
        obj = json.loads(line)
        if "summary" in obj:
            summary = obj["summary"]
        else:
            windows.append((time.monotonic(), obj))
    return windows, summary


def check_windows(windows):
    assert len(windows) >= 2, windows
    idx = [w["window"] for _, w in windows]
    assert idx == sorted(set(idx)), idx  # advancing, never twice
    for _, w in windows:
        assert w["end"] - w["start"] == pytest.approx(WINDOW)
        assert w["start"] == pytest.approx(w["window"] * STRIDE)
        assert w["latency_ms"] >= 0 and len(w["topk"]) == 2 and w["topk"][0]["name"] in ("red", "green", "blue")
        assert w["dropped_so_far"] >= 0


@pytest.mark.slow
def test_stdin_mpegts_stream_to_the_end_with_an_overlay_video(checkpoint, tmp_path):
    out = tmp_path / "labelled.mp4"
    proc = tcpnet_stream("-", checkpoint, "--out", str(out), stdin=subprocess.PIPE)
    fed = {}

    def writer():
        with open(proc.stdin.fileno(), "wb", buffering=0, closefd=False) as f:
            feed(f, 5.0)
        proc.stdin.close()
        fed["end"] = time.monotonic()

    for line in proc.stderr:  # the model is loaded and warm: what is fed from now on plays live
        if "-: opening" in line:
            break
    threading.Thread(target=writer, daemon=True).start()
    windows, summary = read_results(proc)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()[-2000:]
    check_windows(windows)
    assert windows[0][0] < fed["end"] - 1.0  # results come while the stream plays, not at its end
    assert summary["received"] == 5 * FPS and summary["windows"] == len(windows)
    assert summary["sampled"] == summary["processed"] + summary["dropped"] + summary["unused"]
    assert summary["latency_p50_ms"] is not None and summary["latency_p95_ms"] >= summary["latency_p50_ms"]
    assert "latency p50" in proc.stderr.read()
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == summary["out_frames"] > 2 * FPS and frames[0].shape == (96, 128, 3)
    bar = frames[-1][-3:, :, 1]  # the probability bar (green, ~1/3 of the width) along the bottom
    assert bar[:, :8].mean() > 150 and bar[:, -8:].mean() < 80


@pytest.mark.slow
def test_tcp_stream_that_stalls_mid_way_ends_with_the_summary(checkpoint):
    url, feeder = tcp_feeder(2.5, stall=8.0)
    proc = tcpnet_stream(url, checkpoint, "--timeout", "2")
    windows, summary = read_results(proc)
    assert proc.wait(timeout=30) == 0
    err = proc.stderr.read()
    check_windows(windows)
    assert "no frame for 2 s; ending" in err and "frames:" in err and "Traceback" not in err
    assert 2 * FPS <= summary["received"] <= 2.5 * FPS and summary["windows"] == len(windows)


@pytest.mark.slow
def test_ctrl_c_ends_with_the_summary(checkpoint):
    url, feeder = tcp_feeder(20.0)
    proc = tcpnet_stream(url, checkpoint)
    first = json.loads(proc.stdout.readline())
    second = json.loads(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)
    windows, summary = read_results(proc)
    assert proc.wait(timeout=30) == 0
    assert second["window"] > first["window"] and summary["windows"] == 2 + len(windows)
    assert summary["received"] < 20 * FPS and "latency p50" in proc.stderr.read()


@pytest.mark.slow
def test_a_source_that_never_delivers_is_one_error_after_the_timeout(checkpoint):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    refused = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    probe.close()  # nobody listens there: the connection is refused, and retried until the timeout
    started = time.monotonic()
    procs = [tcpnet_stream(refused, checkpoint, "--timeout", "1.5"),
             tcpnet_stream("-", checkpoint, "--timeout", "1.5", stdin=subprocess.PIPE)]  # a pipe that stays empty
    for source, proc in zip((refused, "-"), procs):
        out, err = proc.communicate(timeout=60)
        lines = err.strip().splitlines()
        assert proc.returncode == 1 and out == "", err
        assert lines[-1].startswith(f"tcpnet: error: {source}: no frame within 1.5 s"), err
        assert "Traceback" not in err
    assert time.monotonic() - started >= 1.5


class SlowHead(torch.nn.Module):
    """The model's head, and then a sleep: a model slower than the window it scores."""

    def __init__(self, head, seconds):
        super().__init__()
        self.head, self.seconds = head, seconds

    def forward(self, x, num_segments):
        time.sleep(self.seconds)
        return self.head(x, num_segments)


@pytest.mark.slow
def test_a_slow_model_drops_frames_instead_of_drifting():
    model, delay = _model(), 0.6  # 0.6 s per window, windows of 0.5 s every 0.125 s
    model.head = SlowHead(model.head, delay)
    url, feeder = tcp_feeder(5.0)
    results = []
    options = StreamOptions(window=0.5, stride=0.125, topk=1, timeout=5)
    stats = run_stream(url, model, options, emit=results.append)
    stride = 0.125
    assert stats.received == 5 * FPS and stats.windows == len(results) >= 3
    # without dropping, the 5 s stream's 37 windows would take 22 s: the last one ~17 s late
    assert stats.windows_skipped > 0 and stats.dropped > 0 and results[-1].dropped_so_far > 0
    p95 = stats.summary()["latency_p95_ms"] / 1000
    assert p95 < 2 * delay + 2 * stride + 0.5, stats.summary()
    assert max(r.latency_ms for r in results) / 1000 < 2 * delay + 2 * stride + 1.0
    assert stats.sampled == stats.processed + stats.dropped + stats.unused


def test_a_missing_file_names_itself():
    with pytest.raises(StreamError, match="nothere.mp4: no such file"):
        run_stream("nothere.mp4", _model())


def test_the_queue_drops_the_oldest_and_counts_them():
    q = FrameQueue(3)
    for i in range(5):
        q.put(i)
    assert q.take(0) == [2, 3, 4] and q.evicted == 2 and q.take(0) == []
    q.close()
    assert q.closed and q.take(0.01) == []


def _sample(j, size=8):
    return Sample(j, np.full((size, size, 3), j, np.uint8), j * 0.25, time.monotonic())


def test_the_scheduler_scores_the_newest_complete_window_and_counts_what_it_skips():
    model = _model()
    grid = WindowGrid(1.0, 0.5, T)  # 4 segments, a window every 2
    stats = StreamStats()
    sched = Scheduler(grid, FrameFeatureCache(model), stats, lossless=False)
    sched.add([_sample(j) for j in range(3)])
    assert sched.due() == []  # window 0 needs segments 0-3
    sched.add([_sample(3)])
    assert sched.due() == [0]
    sched.mark_used(0)
    sched.add([_sample(j) for j in range(4, 12)])  # the model fell behind: windows 1-4 complete
    assert sched.due() == [4] and stats.windows_skipped == 3
    sched.mark_used(4)
    assert stats.processed == 8 and stats.dropped == 4  # segments 4-7 arrived, no window took them
    sched.add([_sample(13), _sample(14), _sample(15)])  # 12 was dropped from a full queue
    assert sched.due() == [] and stats.windows_skipped == 5  # window 5 stale, window 6 (12-15) cannot be formed
    sched.finish()
    assert stats.processed + stats.dropped + stats.unused == 15


def test_prefetch_runs_the_next_windows_frames_while_idle():
    """While no window is due, the frames of the window that completes next go through the backbone;
    that window then computes only its last frame, and its logits are the same."""
    model = _model()
    grid = WindowGrid(WINDOW, STRIDE, T)
    cache = FrameFeatureCache(model)
    sched = Scheduler(grid, cache, StreamStats(), lossless=False)
    sched.add([_sample(j) for j in range(3)])
    assert sched.due() == [] and sched.prefetch() == 3 and cache.backbone_frames == 3
    assert sched.prefetch() == 0  # nothing new
    sched.add([_sample(3)])
    assert sched.due() == [0]
    got = cache.logits([list(grid.window_segments(0))])
    assert cache.backbone_frames == 4  # only the last frame at window time
    plain = FrameFeatureCache(model)
    plain.add(list(range(4)), torch.from_numpy(np.stack([_sample(j).rgb for j in range(4)])))
    torch.testing.assert_close(got, plain.logits([list(range(4))]), rtol=0, atol=1e-6)
    sched.mark_used(0)
    sched.add([_sample(4)])  # window 1 (segments 1-4) is complete: scored at once, 1 new frame
    assert sched.due() == [1]
    cache.logits([list(grid.window_segments(1))])
    assert cache.backbone_frames == 5


@pytest.mark.slow
def test_a_file_read_as_fast_as_possible_scores_every_window(tmp_path):
    from videos import make_frames, write_video

    path = write_video(tmp_path / "v.mp4", make_frames(60, 48, 64))  # 2.4 s at 25 fps
    results = []
    stats = run_stream(str(path), _model(), StreamOptions(window=1.0, stride=0.25, realtime=False),
                       emit=results.append)
    assert [r.window for r in results] == list(range(6)) and stats.dropped == 0 and stats.windows_skipped == 0
