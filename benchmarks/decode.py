"""Clip-reading speed: `load_clip` against a naive "decode every frame, then index" PyAV reader,
against forced seek-per-frame / forced decode-forward plans of our reader, and against reading
the same clip extracted to JPEG frames; plus end-to-end `VideoDataset` + DataLoader throughput.

Workload: TSN train-mode sampling (T = 8 and 16 segments, offsets[x] = x*avg + randint(avg),
avg = F // T) on 10 s 340x256 H.264 clips (25 fps, 250 frames, 2 B-frames, written here with
PyAV) with a keyframe every 250 frames (one GOP) and every 16 frames. Reported: clips/s, median
over --repeats repetitions after a warm-up, and the ratios the design promises
(ours / naive >= 3x on one-GOP clips, ours within 1.5x of the cheaper forced plan).

"ours (cold)" clears the per-process index cache before every clip (each video is new, as in
one training epoch over a large dataset); the forced plans and "ours (cached)" reuse the index,
so they compare the decode plans alone. Decoders run single-threaded (threads=1, what
load_clip uses inside DataLoader workers) unless --threads says otherwise.

    python benchmarks/decode.py            # full run (about 3 min on 2 shared cores)
    python benchmarks/decode.py --quick    # smoke run
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import format_table, machine_summary  # noqa: E402

from tcpnet.data import load_clip  # noqa: E402
from tcpnet.data import video as video_mod  # noqa: E402

FPS, NUM_FRAMES, HEIGHT, WIDTH = 25, 250, 256, 340


def make_frames(seed: int) -> np.ndarray:
    """A blocky random texture panning 2 px per frame: real motion, moderate bitrate."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (HEIGHT // 4, (WIDTH + 2 * NUM_FRAMES) // 4 + 1, 3), dtype=np.uint8)
    tex = tex.repeat(4, axis=0).repeat(4, axis=1)
    return np.stack([tex[:, 2 * t: 2 * t + WIDTH] for t in range(NUM_FRAMES)])


def write_h264(path: Path, frames: np.ndarray, gop: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={
            "preset": "veryfast", "crf": "23",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=2"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_jpegs(folder: Path, path: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0), start=1):
            Image.fromarray(frame.to_ndarray(format="rgb24")).save(folder / f"img_{i:05d}.jpg", quality=90)


def naive_read(path, indices, threads: int) -> torch.Tensor:
    """The baseline: decode and convert every frame, then index."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    return torch.from_numpy(frames[indices])


def tsn_indices(rng: np.random.Generator, num_segments: int) -> np.ndarray:
    avg = NUM_FRAMES // num_segments
    return np.arange(num_segments) * avg + rng.integers(0, avg, size=num_segments)


def bench_readers(files, folders, num_segments, args) -> dict:
    """clips/s of every reader on the same index sets (cycling over the files)."""
    rng = np.random.default_rng(num_segments)
    jobs = [(files[i % len(files)], folders[i % len(folders)], tsn_indices(rng, num_segments))
            for i in range(args.clips)]

    def cold(path, idx):
        video_mod._cached_index.cache_clear()
        return load_clip(path, idx, threads=args.threads)

    readers = {
        "naive": lambda p, f, idx: naive_read(p, idx, args.threads),
        "ours (cold)": lambda p, f, idx: cold(p, idx),
        "ours (cached)": lambda p, f, idx: load_clip(p, idx, threads=args.threads),
        "forced seek": lambda p, f, idx: video_mod.read_video(p, idx, threads=args.threads, strategy="seek"),
        "forced forward": lambda p, f, idx: video_mod.read_video(p, idx, threads=args.threads, strategy="forward"),
        "JPEG folder": lambda p, f, idx: load_clip(f, idx),
    }
    # all readers must agree exactly before they are timed
    for p, f, idx in jobs[:2]:
        ref = readers["naive"](p, f, idx)
        for name in ("ours (cold)", "forced seek", "forced forward"):
            got = readers[name](p, f, idx)
            assert torch.equal(torch.as_tensor(got), ref), f"{name} differs from the naive reader on {p}"
    # Interleave the readers clip by clip (rotating their order) so that load from other
    # processes hits all of them alike; repetition 0 is the warm-up.
    names = list(readers)
    times = {name: [] for name in names}
    for rep in range(args.repeats + 1):
        totals = dict.fromkeys(names, 0.0)
        for j, (p, f, idx) in enumerate(jobs):
            for name in names[j % len(names):] + names[: j % len(names)]:
                t0 = time.perf_counter()
                readers[name](p, f, idx)
                totals[name] += time.perf_counter() - t0
        if rep:
            for name in names:
                times[name].append(totals[name])
    rates = {name: len(jobs) / statistics.median(t) for name, t in times.items()}
    decoded = {}  # frames the decoder output per clip: the plan's cost, free of timing noise
    for name in ("ours (cached)", "forced seek", "forced forward"):
        video_mod.counters.clear()
        for p, f, idx in jobs:
            readers[name](p, f, idx)
        decoded[name] = (video_mod.counters["frames"] / len(jobs), video_mod.counters["seeks"] / len(jobs))
    return rates, decoded


def bench_dataloader(files, num_segments, args) -> tuple:
    """clips/s of VideoDataset (or a plain Dataset over load_clip) vs the naive reader, 2 workers."""
    from torch.utils.data import DataLoader, Dataset

    records = [(str(files[i % len(files)]), NUM_FRAMES) for i in range(args.loader_clips)]
    what = "plain Dataset over load_clip"
    try:
        from tcpnet.data import TSNTrainSampler, VideoDataset, VideoRecord

        ours = VideoDataset([VideoRecord(p, n, 0) for p, n in records], sampler=TSNTrainSampler(num_segments),
                            seed=0, return_uint8=True)
        what = "tcpnet VideoDataset (uint8, no transform)"
    except ImportError:
        ours = None

    class Plain(Dataset):
        def __init__(self, reader):
            self.reader = reader

        def __len__(self):
            return len(records)

        def __getitem__(self, i):
            rng = np.random.default_rng(i)
            return self.reader(records[i][0], tsn_indices(rng, num_segments)), 0

    if ours is None:
        ours = Plain(lambda p, idx: load_clip(p, idx))
    naive = Plain(lambda p, idx: naive_read(p, idx, 1))
    loaders = [DataLoader(d, batch_size=4, num_workers=args.workers, persistent_workers=True)
               for d in (ours, naive)]
    times = [[], []]
    for rep in range(max(3, args.repeats // 2) + 1):  # interleaved; round 0 starts workers (warm-up)
        for k, loader in enumerate(loaders):
            t0 = time.perf_counter()
            for _ in loader:
                pass
            if rep:
                times[k].append(time.perf_counter() - t0)
    del loaders
    rates = [len(records) / statistics.median(t) for t in times]
    return what, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few clips and repetitions (smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clips", type=int, default=8, help="clips per timed repetition")
    parser.add_argument("--files", type=int, default=4, help="distinct video files per keyframe interval")
    parser.add_argument("--threads", type=int, default=1, help="FFmpeg decoder threads (0: automatic)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loader-clips", type=int, default=32)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.clips, args.files, args.loader_clips = 2, 3, 2, 8

    print(f"machine: {machine_summary()}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          f"(shared: other processes add noise); PyAV {av.__version__}, FFmpeg decoder threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sets = {}
        for gop in (250, 16):
            files, folders = [], []
            for k in range(args.files):
                path = tmp / f"gop{gop}_{k}.mp4"
                write_h264(path, make_frames(seed=k), gop)
                write_jpegs(tmp / f"gop{gop}_{k}_frames", path)
                files.append(path)
                folders.append(tmp / f"gop{gop}_{k}_frames")
            sets[gop] = (files, folders)
        print(f"wrote {2 * args.files} clips + JPEG folders in {time.perf_counter() - t0:.1f} s; "
              f"mean size {np.mean([p.stat().st_size for p in sets[16][0] + sets[250][0]]) / 1024:.0f} KiB")

        rows, plans = [], []
        for gop in (250, 16):
            for num_segments in (8, 16):
                r, decoded = bench_readers(*sets[gop], num_segments, args)
                best_forced = max(r["forced seek"], r["forced forward"])
                plans.append([f"gop {gop}", num_segments, NUM_FRAMES] + [
                    f"{decoded[k][0]:.0f} / {decoded[k][1]:.1f}" for k in decoded])
                rows.append([
                    f"gop {gop}", num_segments,
                    *(f"{r[k]:.1f}" for k in r),
                    f"{r['ours (cold)'] / r['naive']:.2f}x",
                    f"{r['ours (cached)'] / best_forced:.2f}",
                ])
        headers = ["clip", "T", "naive", "ours (cold)", "ours (cached)", "forced seek", "forced forward",
                   "JPEG folder", "ours/naive", "ours/best forced"]
        print("\nclips per second (median of %d), single process\n" % args.repeats)
        print(format_table(headers, rows))
        print("\nframes decoded / seeks per clip (deterministic cost of each plan)\n")
        print(format_table(["clip", "T", "naive", "ours", "forced seek", "forced forward"], plans))

        print(f"\nDataLoader, {args.workers} workers, batch 4, {args.loader_clips} clips, T=8 (clips/s):\n")
        rows = []
        for gop in (250, 16):
            what, (ours, naive) = bench_dataloader(sets[gop][0], 8, args)
            rows.append([f"gop {gop}", what, f"{ours:.1f}", f"{naive:.1f}", f"{ours / naive:.2f}x"])
        print(format_table(["clip", "ours", "ours clips/s", "naive clips/s", "ratio"], rows))


if __name__ == "__main__":
    main()
