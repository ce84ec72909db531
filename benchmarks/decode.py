"""Clip-decoding speed and frame exactness: tcpnet's `load_clip` against torchcodec (exact and
approximate seek modes) and decord, whichever import, in one run.

Content: natural-looking video written here with PyAV (a drifting multi-scale cloud texture,
textured discs moving across it, per-frame film grain; not flat colours, whose decoding costs
far less than real video): H.264 (x264 preset fast, crf 23, B-pyramid) at 176x144, 340x256
(250 frames, 10 s at 25 fps) and 1280x720 (125 frames), keyframe every 16 and every 250 frames;
VP9 (libvpx good quality, alt-ref frames) and open-GOP H.264, both 340x256. Workload: TSN
training sampling (T = 8 and 16, offsets[x] = x*avg + randint(avg), avg = F // T), one decoder
thread per reader, torch intra-op threads 1 (both as in a DataLoader worker), every call on a
file path the process has not read before (a fresh hard link or copy: no reader may reuse
an index or an open file), the readers interleaved clip by clip in rotating order, repetition
0 a warm-up; reported: median ms per clip over the repetitions and the ratio
`peer time / tcpnet time` (above 1: tcpnet is faster), with geometric means.

Exactness: each reader reads frames of three files that trip frame-numbering (variable frame
rate, open GOP, a `-c copy`-style cut that starts mid-GOP and so carries an MP4 edit list);
each returned frame is matched to the nearest frame of decode-all-and-index (PyAV), and the
table says "exact" (frame index right; "bit-identical" when the pixels are too) or how many
frames off it was.

    python benchmarks/decode.py            # full run (several minutes)
    python benchmarks/decode.py --quick    # smoke run (small sizes, 2 repetitions)
"""
from __future__ import annotations

import argparse
import collections
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # tests/videos.py: write_cut
from _common import format_table, machine_summary  # noqa: E402
from videos import mp4_edit_lists, write_cut  # noqa: E402

from tcpnet.data import load_clip  # noqa: E402
from tcpnet.data.readers import pyav as video_mod  # noqa: E402

FPS = 25


# ------------------------------------------------------------------ content


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: int) -> np.ndarray:
    from PIL import Image

    small = rng.random((max(height // scale, 2), max(width // scale, 2)), dtype=np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((width, height), Image.BICUBIC))


def natural_frames(num_frames: int, height: int, width: int, seed: int = 0, grain: float = 4.0):
    """Yield uint8 (H, W, 3) frames: a panning multi-scale texture, four textured discs on their
    own paths, Gaussian grain. Every frame differs from every other (the grain alone does)."""
    rng = np.random.default_rng(seed)
    big_h, big_w = height + 64, width + 3 * num_frames + 64
    texture = sum(_smooth_noise(rng, big_h, big_w, s) * a for s, a in ((64, 0.5), (16, 0.3), (4, 0.15), (1, 0.05)))
    background = texture[..., None] * (rng.random(3, dtype=np.float32) * 0.6 + 0.4) * 230
    discs = []
    for _ in range(4):
        r = int(rng.integers(max(height // 10, 2), max(height // 4, 3)))
        skin = sum(_smooth_noise(rng, 2 * r, 2 * r, s) * a for s, a in ((8, 0.6), (2, 0.4)))[..., None]
        yy, xx = np.mgrid[-r:r, -r:r]
        discs.append((r, skin * (rng.random(3, dtype=np.float32) * 255), yy ** 2 + xx ** 2 < r * r,
                      rng.random(4) * [height, width, 2 * np.pi, 2 * np.pi], rng.uniform(0.5, 3, 2)))
    for t in range(num_frames):
        dx, dy = int(3 * t + 20 * np.sin(t / 17)), int(16 + 12 * np.sin(t / 23))
        frame = background[dy:dy + height, dx:dx + width].copy()
        for r, skin, mask, (y0, x0, py, px), (vy, vx) in discs:
            cy = int((y0 + vy * t * 1.3 + 20 * np.sin(t / 9 + py)) % (height + 2 * r)) - r
            cx = int((x0 + vx * t * 2.1 + 20 * np.cos(t / 11 + px)) % (width + 2 * r)) - r
            y1, y2, x1, x2 = max(cy - r, 0), min(cy + r, height), max(cx - r, 0), min(cx + r, width)
            if y1 < y2 and x1 < x2:
                part = (slice(y1 - cy + r, y2 - cy + r), slice(x1 - cx + r, x2 - cx + r))
                frame[y1:y2, x1:x2][mask[part]] = skin[part][mask[part]]
        frame += rng.normal(0, grain, (height, width, 1)).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def encode(path: Path, num_frames: int, height: int, width: int, *, seed: int, codec: str = "libx264",
           gop: int = 250, open_gop: bool = False, vfr: bool = False) -> Path:
    if codec == "libx264":
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0" + (":open-gop=1" if open_gop else "")
        options = {"preset": "fast", "crf": "23", "x264-params": params}
    else:  # libvpx-vp9, good quality with alt-ref frames (as most VP9 on the web)
        options = {"deadline": "good", "cpu-used": "5", "auto-alt-ref": "1", "lag-in-frames": "25",
                   "crf": "32", "b": "0", "g": str(gop)}
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 2
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for array in natural_frames(num_frames, height, width, seed=seed):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if vfr:  # frame durations 20-100 ms
                frame.pts, frame.time_base = t, Fraction(1, 1000)
                t += int(rng.choice([20, 33, 40, 67, 100]))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def decode_all(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# ------------------------------------------------------------------ readers


TCPNET_COUNTS: "collections.Counter[str]" = collections.Counter()  # frames decoded, packets sent, calls


def _readers(include_noskip: bool):
    """name -> (function(path, indices) -> uint8 (T, H, W, 3) array or tensor), and why peers are missing."""
    def tcpnet(p, idx):
        frames, packets = video_mod.counters["frames"], video_mod.counters["packets"]
        clip = load_clip(p, idx, threads=1)
        TCPNET_COUNTS["frames"] += video_mod.counters["frames"] - frames
        TCPNET_COUNTS["packets"] += video_mod.counters["packets"] - packets
        TCPNET_COUNTS["calls"] += 1
        return clip

    readers = {"tcpnet": tcpnet}
    missing = {}
    try:
        from torchcodec.decoders import VideoDecoder

        def torchcodec_reader(mode):
            def read(p, idx):
                decoder = VideoDecoder(str(p), seek_mode=mode, num_ffmpeg_threads=1, dimension_order="NHWC")
                return decoder.get_frames_at(idx.tolist()).data
            return read

        readers["torchcodec exact"] = torchcodec_reader("exact")
        readers["torchcodec approx"] = torchcodec_reader("approximate")
    except Exception as err:  # ImportError, or no system FFmpeg libraries
        missing["torchcodec"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    try:
        import decord

        decord.logging.set_level(decord.logging.QUIET)  # its FFmpeg warns on every open-GOP seek

        def decord_reader(p, idx):
            return decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=1).get_batch(idx.tolist()).asnumpy()

        readers["decord"] = decord_reader
    except Exception as err:
        missing["decord"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    if include_noskip:
        readers["tcpnet, no skip"] = lambda p, idx: video_mod.read_video(p, idx, threads=1, skip_nonref=False)
    return readers, missing


class FreshPaths:
    """A new path for every call (hard link, else copy), so no reader sees a file twice."""

    def __init__(self, root: Path):
        self.root = root / "fresh"
        self.root.mkdir()
        self.count = 0

    def __call__(self, path: Path) -> Path:
        self.count += 1
        fresh = self.root / f"{self.count}_{path.name}"
        try:
            os.link(path, fresh)
        except OSError:
            shutil.copyfile(path, fresh)
        return fresh

    def clear(self) -> None:
        for p in self.root.iterdir():
            p.unlink()


def tsn_indices(rng: np.random.Generator, num_frames: int, num_segments: int) -> np.ndarray:
    avg = num_frames // num_segments
    return np.arange(num_segments) * avg + rng.integers(0, avg, size=num_segments)


def bench_case(files, num_frames, num_segments, readers, fresh, args) -> dict:
    """Median seconds per clip of every reader on the same clips (files cycled, random TSN indices)."""
    rng = np.random.default_rng(num_segments)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    names = list(readers)
    per_rep = {name: [] for name in names}
    for rep in range(args.repeats + 1):
        totals = dict.fromkeys(names, 0.0)
        for j in range(args.clips):
            path = files[j % len(files)]
            idx = tsn_indices(rng, num_frames, num_segments)
            shift = (rep * args.clips + j) % len(names)
            for name in names[shift:] + names[:shift]:
                p = fresh(path)
                t0 = clock()
                readers[name](p, idx)
                totals[name] += clock() - t0
        fresh.clear()
        if rep:  # repetition 0 warms up
            for name in names:
                per_rep[name].append(totals[name] / args.clips)
    return {name: statistics.median(t) for name, t in per_rep.items()}


def exactness(path: Path, ref: np.ndarray, read, fresh, num_segments: int = 16) -> str:
    """Does `read` return decode-all's frames? 'exact' / 'k..m frames off' / 'error: ...'."""
    rng = np.random.default_rng(0)
    offsets, max_diff = [], 0
    for _ in range(3):
        idx = tsn_indices(rng, len(ref), num_segments)
        try:
            got = np.asarray(read(fresh(path), idx))
        except Exception as err:
            return f"error ({type(err).__name__})"
        flat = ref.reshape(len(ref), -1).astype(np.int16)
        for i, frame in zip(idx.tolist(), got):
            diff = np.abs(flat - frame.reshape(1, -1).astype(np.int16)).mean(axis=1)
            offsets.append(int(np.argmin(diff)) - i)
            max_diff = max(max_diff, int(np.abs(ref[i].astype(np.int16) - frame).max()))
    if not any(offsets):
        return "exact, bit-identical" if max_diff == 0 else f"exact (pixels differ by up to {max_diff})"
    off = [o for o in offsets if o]
    return f"{len(off)}/{len(offsets)} frames {min(off):+d}..{max(off):+d} off"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, few clips and repetitions")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clips", type=int, default=4, help="clips per case and repetition")
    parser.add_argument("--files", type=int, default=2, help="distinct encodes per video type")
    parser.add_argument("--sizes", default="176x144,340x256,1280x720")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (steadier on a shared machine)")
    parser.add_argument("--no-skip-column", action="store_true", help="leave out tcpnet without frame skipping")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.clips, args.files, args.sizes = 2, 2, 1, "176x144,340x256"
    torch.set_num_threads(1)  # as in DataLoader workers; peers that use torch ops spin otherwise

    readers, missing = _readers(include_noskip=not args.no_skip_column)
    load_start = os.getloadavg()[0]
    print(f"machine: {machine_summary()}; {os.cpu_count()} CPUs; load average (1 min) {load_start:.2f}")
    versions = [f"PyAV {av.__version__} (libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})"]
    try:
        import torchcodec
        from torchcodec._core import get_ffmpeg_library_versions

        versions.append(f"torchcodec {torchcodec.__version__} "
                        f"(system FFmpeg {get_ffmpeg_library_versions().get('ffmpeg_version', '?')})")
    except Exception:
        pass
    try:
        import decord

        versions.append(f"decord {decord.__version__}")
    except Exception:
        pass
    print("readers:", ", ".join(versions), "; one decoder thread each; clock:", args.clock)
    for name, why in missing.items():
        print(f"  {name} not compared: {why}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fresh = FreshPaths(tmp)
        t0 = time.perf_counter()
        cases = []  # (label, files, num_frames)
        seed = 0
        for size in args.sizes.split(","):
            width, height = map(int, size.split("x"))
            num_frames = 125 if width * height > 500_000 else 250
            for gop in (16, 250):
                files = []
                for k in range(args.files):
                    seed += 1
                    files.append(encode(tmp / f"h264_{size}_g{gop}_{k}.mp4", num_frames, height, width,
                                        seed=seed, gop=gop))
                cases.append((f"H.264 {size} keyint {gop}", files, num_frames))
        for label, kwargs, suffix in (("VP9 340x256 keyint 250", dict(codec="libvpx-vp9", gop=250), "webm"),
                                      ("H.264 340x256 open GOP, keyint 50", dict(gop=50, open_gop=True), "mp4")):
            files = []
            for k in range(args.files):
                seed += 1
                files.append(encode(tmp / f"{suffix}_{k}_{seed}.{suffix}", 250, 256, 340, seed=seed, **kwargs))
            cases.append((label, files, 250))
        sizes = [p.stat().st_size for _, files, _ in cases for p in files]
        print(f"wrote {len(sizes)} videos in {time.perf_counter() - t0:.0f} s "
              f"({min(sizes) // 1024}-{max(sizes) // 1024} KiB)\n")

        rows, ratios = [], {name: [] for name in readers if name != "tcpnet"}
        for label, files, num_frames in cases:
            for num_segments in (8, 16):
                TCPNET_COUNTS.clear()
                times = bench_case(files, num_frames, num_segments, readers, fresh, args)
                c = TCPNET_COUNTS
                row = [label, num_segments, f"{times['tcpnet'] * 1e3:.1f}",
                       f"{c['frames'] / c['calls']:.0f} / {c['packets'] / c['calls']:.0f}"]
                for name in ratios:
                    ratio = times[name] / times["tcpnet"]
                    ratios[name].append(ratio)
                    row.append(f"{times[name] * 1e3:.1f} ({ratio:.2f})")
                rows.append(row)
        rows.append(["geometric mean of the ratios", "", "", ""] + [
            f"**{math.exp(np.mean(np.log(ratios[name]))):.2f}**" for name in ratios])
        rows.append(["lowest ratio", "", "", ""] + [f"{min(ratios[name]):.2f}" for name in ratios])
        print(f"ms per clip, median of {args.repeats} repetitions ({args.clips} clips per case and repetition, "
              f"{args.files} encode(s) per video type); (ratio) = peer time / tcpnet time, above 1: tcpnet "
              f"faster; decoded / sent: frames the tcpnet decoder decoded / packets it was sent, per clip "
              f"(the rest: non-reference pictures skipped)\n")
        print(format_table(["video", "T", "tcpnet ms", "decoded / sent"] + list(ratios), rows))

        print("\nframe exactness against decode-all-and-index (PyAV), 3 x 16 TSN frames per file:\n")
        source = encode(tmp / "cut_source.mp4", 250, 256, 340, seed=101, gop=32)
        files = {
            "variable frame rate (20-100 ms)": encode(tmp / "vfr.mp4", 250, 256, 340, seed=102, gop=16, vfr=True),
            "open GOP (keyint 16, B-pyramid)": encode(tmp / "open_gop.mp4", 250, 256, 340, seed=103, gop=16,
                                                      open_gop=True),
            "-c copy cut at frame 45 (edit list)": write_cut(source, tmp / "cut.mp4", 45),
        }
        assert any(t > 0 for _, t in mp4_edit_lists(files["-c copy cut at frame 45 (edit list)"]))
        names = [n for n in readers if n != "tcpnet, no skip"]
        rows = []
        for label, path in files.items():
            ref = decode_all(path)
            rows.append([label] + [exactness(path, ref, readers[n], fresh) for n in names])
            fresh.clear()
        print(format_table(["file"] + names, rows))
    print(f"\nload average (1 min): {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
