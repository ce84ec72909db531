"""Dataset preparation tools: frame extraction, re-encoding, list files, Mini-Kinetics-200.

Every tool walks a class-per-folder tree (``<root>/<class_name>/<video>``), shows a tqdm bar,
logs what it skips or fails, never stops on one bad video, and returns a :class:`PrepareSummary`
(done / skipped / failed counts and the failed paths with their errors).  Outputs are written
under a temporary name and renamed when complete, so an interrupted run resumes by skipping
what exists.  The H.264 writer is :mod:`tcpnet.data.writer`.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import av
import numpy as np
from tqdm import tqdm

from tcpnet.data.errors import DecodeError, video_file_stat
from tcpnet.data.frame_template import (DEFAULT_FRAME_TEMPLATE, bind_frame_template, check_frame_template,
                                        frame_file_name)
from tcpnet.data.list_parsers import VIDEO_EXTENSIONS, open_list_file
from tcpnet.data.records import PathLike
from tcpnet.data.writer import H264Writer, part_path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class PrepareSummary:
    """What a tool did: counts of done / skipped / failed items, the failures and tool-specific numbers."""

    tool: str
    done: int = 0
    skipped: int = 0
    failed_paths: list[tuple[str, str]] = field(default_factory=list)  # (path, error message)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.failed_paths)

    def __str__(self) -> str:
        return f"{self.tool}: {self.done} done, {self.skipped} skipped, {self.failed} failed"


# ------------------------------------------------------------------------------------ helpers
def find_video_paths(root: PathLike, extensions: Sequence[str] = VIDEO_EXTENSIONS
                     ) -> tuple[list[Path], list[tuple[str, str]]]:
    """Everything under ``root`` named like a video (our ``.part`` files aside): the video files
    (sorted), and ``(path, problem)`` for the rest, so no tool passes one over without a word: a
    directory, a FIFO, a socket or device, a dangling symbolic link or a link loop, an empty file,
    a folder that cannot be listed. Symbolic links to directories are not followed."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: video root is not a directory")
    exts = tuple(e.lower() for e in extensions)
    files: list[Path] = []
    problems: list[tuple[str, str]] = []

    def unlistable(err: OSError) -> None:
        problems.append((str(err.filename), f"cannot list the folder ({err.strerror})"))

    for folder, dirnames, filenames in os.walk(root, onerror=unlistable):
        for name in dirnames + filenames:
            path = Path(folder) / name
            if not name.lower().endswith(exts) or path.stem.endswith(".part"):
                continue
            try:
                video_file_stat(path)
                files.append(path)
            except DecodeError as err:
                problems.append((str(path), _problem(err)))
    return sorted(files), sorted(problems)


def find_videos(root: PathLike, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                summary: Optional[PrepareSummary] = None) -> list[Path]:
    """The video files under ``root`` (see :func:`find_video_paths`); each other path named like a
    video is logged with what it is, and counted as a failure of ``summary`` when given."""
    files, problems = find_video_paths(root, extensions)
    for path, problem in problems:
        logger.warning("%s: %s: %s", summary.tool if summary else "find_videos", path, problem)
    if summary is not None:
        summary.failed_paths.extend(problems)
    return files


def _scaled_size(width: int, height: int, short_side: Optional[int], even: bool) -> tuple[int, int]:
    """(width, height) with the shorter side = ``short_side`` keeping the aspect ratio (None: unchanged)."""
    if short_side is None:
        w, h = width, height
    else:
        scale = short_side / min(width, height)
        w, h = (short_side, round(height * scale)) if width <= height else (round(width * scale), short_side)
    if even:
        w, h = w + (w % 2), h + (h % 2)
    return max(w, 2 if even else 1), max(h, 2 if even else 1)


def _sanitize(rel: Path, replace_spaces: bool) -> Path:
    return Path(*[part.replace(" ", "_") for part in rel.parts]) if replace_spaces else rel


def mp_context() -> BaseContext:
    """Process start method for the tools' workers: "fork" when available and the parent runs no
    other Python threads but tqdm's idle monitor (cheap, works from scripts fed on stdin), else
    "spawn".  The workers use NumPy, PyAV, Pillow and tcpnet's readers (which only wrap frames in
    tensors, no torch computation or thread pool), and do not log."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.name != "tqdm_monitor"]
    if "fork" in get_all_start_methods() and not others:
        return get_context("fork")
    return get_context("spawn")


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Process-pool initializer: end this worker when ``parent_pid`` (the process that started
    the pool) dies, even by SIGKILL, which runs no cleanup in the parent and would leave the
    workers blocked on their task queue forever. On Linux the kernel sends SIGKILL on the
    parent's death (``prctl(PR_SET_PDEATHSIG)``); everywhere a daemon thread also polls the
    parent pid once a second."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the watchdog below still ends the worker
    if os.getppid() != parent_pid:  # the parent died before the worker got here
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="tcpnet-parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def process_pool(workers: int, ctx: Optional[BaseContext] = None) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor whose workers die with this process (see :func:`die_with_parent`)."""
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),))


def _run(fn: Callable[[Any], tuple], jobs: Sequence[Any], workers: int, desc: str,
         progress: bool) -> Iterator[tuple]:
    """Apply ``fn`` to every job, in order, on ``workers`` processes, with a progress bar."""
    parallel = workers > 1 and len(jobs) > 1
    ctx = mp_context() if parallel else None
    bar = tqdm(total=len(jobs), desc=desc, unit="file", disable=not progress)
    try:
        if not parallel:
            for job in jobs:
                yield fn(job)
                bar.update()
        else:
            with process_pool(workers, ctx) as ex:
                for result in ex.map(fn, jobs):
                    yield result
                    bar.update()
    finally:
        bar.close()


def _default_workers(workers: Optional[int]) -> int:
    return max(1, min(4, os.cpu_count() or 1)) if workers is None else max(1, int(workers))


def _collect(summary: PrepareSummary, results: Iterable[tuple]) -> list[tuple]:
    """Count (status, path, payload) results into ``summary``; log each failure. Returns the 'done' ones."""
    done = []
    for status, path, payload in results:
        if status == "done":
            summary.done += 1
            done.append((path, payload))
        elif status == "skipped":
            summary.skipped += 1
        else:
            summary.failed_paths.append((path, payload))
            logger.warning("%s: %s failed: %s", summary.tool, path, payload)
    logger.info("%s", summary)
    return done


# ----------------------------------------------------------------------------- extract_frames
def _extract_one(job: tuple[str, str, Optional[int], str, int]) -> tuple[str, str, Any]:
    src, dst, short_side, template, quality = job
    from PIL import Image

    dst_dir = Path(dst)
    tmp = dst_dir.with_name(dst_dir.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        n = 0
        with av.open(src) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                w, h = _scaled_size(frame.width, frame.height, short_side, even=False)
                rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
                n += 1
                Image.fromarray(rgb).save(tmp / frame_file_name(template, n, dst_dir), quality=quality)
        if n == 0:
            raise ValueError("no frames decoded")
        os.replace(tmp, dst_dir)
        return ("done", src, n)
    except Exception as err:  # noqa: BLE001 - a bad video is a reported failure, never fatal
        return ("failed", src, f"{type(err).__name__}: {err}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract_frames(
    video_root: PathLike,
    frame_root: PathLike,
    short_side: Optional[int] = 256,
    template: str = DEFAULT_FRAME_TEMPLATE,
    quality: int = 95,
    workers: Optional[int] = None,
    *,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    replace_spaces: bool = True,
    progress: bool = True,
) -> PrepareSummary:
    """Decode every video of a class-per-folder tree to the TCPNet frame layout:
    ``<frame_root>/<class>/<video stem>/img_00001.jpg ...`` (1-based; ``template`` as
    ``data.frame_template``, ``{id}`` is the video stem), shorter side ``short_side`` (up- or
    down-scaled, bicubic; None keeps the size), JPEG ``quality``.  A folder that already exists
    counts as done and is skipped; corrupt videos, and paths named like videos that are not video
    files, are reported in the summary. ``replace_spaces`` turns spaces in class/video names into
    '_' (list files cannot hold spaces)."""
    check_frame_template(template)
    video_root, frame_root = Path(video_root), Path(frame_root)
    summary = PrepareSummary("extract_frames")
    jobs = []
    for src in find_videos(video_root, extensions, summary):
        dst = frame_root / _sanitize(src.relative_to(video_root).with_suffix(""), replace_spaces)
        if dst.is_dir() and any(dst.iterdir()):
            summary.skipped += 1
            continue
        jobs.append((str(src), str(dst), short_side, template, int(quality)))
    logger.info("extract_frames: %d videos to decode into %s (%d already extracted)", len(jobs), frame_root,
                summary.skipped)
    done = _collect(summary, _run(_extract_one, jobs, _default_workers(workers), "extract frames", progress))
    summary.extra["frames"] = sum(n for _, n in done)
    return summary


# ----------------------------------------------------------------------------- reencode_videos
def _reencode_one(job: tuple[str, str, Optional[int], int, int, str]) -> tuple[str, str, Any]:
    src, dst, short_side, gop, crf, preset = job
    dst_path = Path(dst)
    tmp = part_path(dst_path)
    try:
        with av.open(src) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            writer = None
            try:
                for frame in container.decode(stream):
                    if writer is None:
                        w, h = _scaled_size(frame.width, frame.height, short_side, even=True)
                        writer = H264Writer(tmp, w, h, fps=Fraction(rate).limit_denominator(1001), crf=crf,
                                            gop=gop, preset=preset, reproducible=False)
                    writer.write(frame.reformat(width=writer.width, height=writer.height, format="yuv420p",
                                                interpolation="BICUBIC"))
                if writer is None:
                    raise ValueError("no frames decoded")
                writer.close()
            except BaseException:
                if writer is not None:
                    writer.container.close()
                raise
        os.replace(tmp, dst_path)
        return ("done", src, (writer.num_frames, os.path.getsize(src), os.path.getsize(dst_path)))
    except Exception as err:  # noqa: BLE001 - a bad video is a reported failure, never fatal
        return ("failed", src, f"{type(err).__name__}: {err}")
    finally:
        tmp.unlink(missing_ok=True)


def reencode_videos(
    src_root: PathLike,
    dst_root: PathLike,
    short_side: Optional[int] = 256,
    gop: int = 16,
    crf: int = 23,
    workers: Optional[int] = None,
    *,
    preset: str = "medium",
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    replace_spaces: bool = True,
    progress: bool = True,
) -> PrepareSummary:
    """Re-encode a video tree to H.264 mp4 (yuv420p) with shorter side ``short_side`` and a keyframe
    every ``gop`` frames, so that random access (TSN sampling) seeks cheaply.  Keeps the tree,
    writes ``.mp4`` names, keeps every frame at the source's average rate (constant frame rate),
    drops audio.  Existing outputs are skipped.  ``extra`` holds frames and bytes before/after."""
    src_root, dst_root = Path(src_root), Path(dst_root)
    summary = PrepareSummary("reencode_videos")
    jobs = []
    for src in find_videos(src_root, extensions, summary):
        dst = dst_root / _sanitize(src.relative_to(src_root).with_suffix(".mp4"), replace_spaces)
        if dst.exists():
            summary.skipped += 1
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((str(src), str(dst), short_side, int(gop), int(crf), preset))
    done = _collect(summary, _run(_reencode_one, jobs, _default_workers(workers), "re-encode", progress))
    before = sum(b for _, (_, b, _) in done)
    after = sum(a for _, (_, _, a) in done)
    summary.extra.update(frames=sum(n for _, (n, _, _) in done), bytes_before=before, bytes_after=after)
    logger.info("reencode_videos: %.1f MB -> %.1f MB", before / 1e6, after / 1e6)
    return summary


# ---------------------------------------------------------------------------------- build_list
def _normalize_name(name: str) -> str:
    return name.strip().replace(" ", "_")


def _read_names(path: PathLike) -> list[str]:
    names = []
    with open_list_file(path) as f:
        for i, line in enumerate(f, 1):
            name = line.strip()
            if not name:
                raise ValueError(f"{os.fspath(path)}:{i}: empty class name (expected one name per line)")
            names.append(name)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{os.fspath(path)}: duplicate class names {dup}")
    return names


def _count_one(job: tuple[str, str, str]) -> tuple[str, str, Any]:
    path, kind, template = job
    try:
        if kind == "frames":
            from tcpnet.data.readers.frames import count_frames

            n = count_frames(path, template)
            bound = bind_frame_template(template, path)
            pattern = re.compile(re.sub(r"\\\{[^}]*\\\}", r"\\d+", re.escape(bound)) + "$")
            total = sum(1 for name in os.listdir(path) if pattern.match(name))
            if n != total:
                return ("failed", path, f"{total} frame files but only {bound.format(1)}.."
                                        f"{bound.format(n)} are consecutive")
        else:
            from tcpnet.data.clip import probe

            n = probe(path).num_frames
        if n < 1:
            return ("failed", path, "no frames")
        return ("done", path, n)
    except Exception as err:  # noqa: BLE001 - any reader error is a failed entry, reported with its type
        return ("failed", path, f"{type(err).__name__}: {err}")


def build_list(
    root: PathLike,
    out_file: PathLike,
    *,
    kind: str = "video",
    label_file: Optional[PathLike] = None,
    class_file: Optional[PathLike] = None,
    extensions: Optional[Sequence[str]] = None,
    template: str = DEFAULT_FRAME_TEMPLATE,
    allow_whitespace: bool = False,
    workers: Optional[int] = 1,
    progress: bool = True,
) -> PrepareSummary:
    """Write a TSN list file (``<path relative to root> <num_frames> <label>`` per line) for a
    class-per-folder tree of videos (``kind="video"``: exact frame counts from the packet index)
    or frame folders (``kind="frames"``: ``<class>/<video>/`` with consecutive ``template`` images).

    Labels come from ``label_file`` (one class name per line, line i = label i; folder names match
    with spaces and '_' treated alike) or, without it, from the sorted class folder names, which
    are then written to ``class_file`` (default: ``classes.txt`` beside ``out_file``).  Paths with
    whitespace are left out and reported (the published reader splits on spaces) unless
    ``allow_whitespace`` (tcpnet's reader takes the last two fields as the numbers)."""
    if kind not in ("video", "frames"):
        raise ValueError(f"kind must be 'video' or 'frames', got {kind!r}")
    root, out_file = Path(root), Path(out_file)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root is not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if label_file is not None:
        names = _read_names(label_file)
        index = {_normalize_name(n): i for i, n in enumerate(names)}
        unknown = [d.name for d in class_dirs if _normalize_name(d.name) not in index]
        if unknown:
            raise ValueError(f"{root}: class folders {unknown[:10]} are not in the label file {label_file} "
                             f"({len(unknown)} unknown)")
        labels = {d.name: index[_normalize_name(d.name)] for d in class_dirs}
    else:
        names = [d.name for d in class_dirs]
        labels = {n: i for i, n in enumerate(names)}
        class_file = Path(class_file) if class_file is not None else out_file.with_name("classes.txt")
    if not class_dirs:
        raise ValueError(f"{root}: no class folders found")

    summary = PrepareSummary("build_list")
    items = []  # (absolute path, label)
    for d in class_dirs:
        if kind == "video":
            entries = find_videos(d, extensions or VIDEO_EXTENSIONS, summary)
        else:
            entries = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.endswith(".part"))
        items += [(p, labels[d.name]) for p in entries]
    jobs, keep = [], []
    for p, label in items:
        rel = p.relative_to(root).as_posix()
        if not allow_whitespace and any(c.isspace() for c in rel):
            summary.failed_paths.append((str(p), "path contains whitespace, which the list format cannot hold "
                                                 "(rename it, e.g. extract_frames(replace_spaces=True))"))
            logger.warning("build_list: %s: path contains whitespace; left out", p)
            continue
        jobs.append((str(p), kind, template))
        keep.append((rel, label))
    counts = dict(_collect(summary, _run(_count_one, jobs, _default_workers(workers), "count frames", progress)))
    lines = [f"{rel} {counts[path]} {label}\n" for (rel, label), (path, _, _) in zip(keep, jobs) if path in counts]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text("".join(lines))
    if class_file is not None:
        text = "".join(f"{n}\n" for n in names)
        class_file = Path(class_file)
        if label_file is None and class_file.exists() and class_file.read_text() != text:
            raise ValueError(f"{class_file}: exists with different class names than the folders of {root}; "
                             "pass label_file=... so that all lists share one label order")
        class_file.write_text(text)
    summary.extra.update(out_file=str(out_file), class_file=str(class_file) if class_file else None,
                         num_classes=len(names), num_lines=len(lines))
    logger.info("build_list: wrote %d lines to %s (%d classes)", len(lines), out_file, len(names))
    return summary


# ------------------------------------------------------------------------- Mini-Kinetics-200
_KINETICS_NAME = re.compile(r"^(?P<ytid>[A-Za-z0-9_-]{11})_\d+_\d+$")


def kinetics_ytid(path: str) -> str:
    """The YouTube id of a Kinetics clip path ``.../<ytid>_<start>_<end>[.mp4]`` (its first 11 chars)."""
    name = Path(path).name
    if Path(name).suffix.lower() in VIDEO_EXTENSIONS:
        name = Path(name).stem
    m = _KINETICS_NAME.match(name)
    if m is None and len(name) < 11:
        raise ValueError(f"{path!r}: expected a Kinetics name '<11-char ytid>_<start>_<end>'")
    return m.group("ytid") if m else name[:11]


def _read_list(path: PathLike) -> list[tuple[str, int, int]]:
    rows = []
    with open_list_file(path) as f:
        for i, line in enumerate(f, 1):
            fields = line.strip().split(" ")
            if fields == [""]:
                continue
            if len(fields) != 3:
                raise ValueError(f"{os.fspath(path)}:{i}: expected 'path num_frames label', got {len(fields)} fields")
            try:
                rows.append((fields[0], int(fields[1]), int(fields[2])))
            except ValueError as err:
                raise ValueError(f"{os.fspath(path)}:{i}: num_frames and label must be integers, "
                                 f"got {fields[1]!r} {fields[2]!r}") from err
    return rows


def make_mini_kinetics200(
    k400_list: PathLike,
    ytid_list: PathLike,
    out_list: PathLike,
    class_map_out: Optional[PathLike] = None,
    *,
    class_map_in: Optional[PathLike] = None,
    k400_classes: Optional[PathLike] = None,
    classes_out: Optional[PathLike] = None,
    expected_classes: int = 200,
) -> PrepareSummary:
    """Mini-Kinetics-200 list from a Kinetics-400 list (no new download): keep the lines whose
    YouTube id is in ``ytid_list`` (one id per line) and relabel them 0..N-1.

    Label order: the kept K400 labels sorted ascending (so K400's alphabetical class order is kept);
    the mapping is written to ``class_map_out`` as ``<k400_label> <k200_label>`` lines.  Pass the
    train split's map as ``class_map_in`` when making the val list so both use the same labels.
    ``k400_classes``/``classes_out`` optionally write the 200 class names.  Ids not found are
    reported in ``extra["missing_ids"]`` (and counted as failed)."""
    rows = _read_list(k400_list)
    wanted: list[str] = []
    with open_list_file(ytid_list) as f:
        for i, line in enumerate(f, 1):
            token = line.strip().split(" ")[0].split(",")[0]
            if token:
                wanted.append(kinetics_ytid(token) if len(token) > 11 else token)
    wanted_set = set(wanted)
    kept = [(p, n, lab) for p, n, lab in rows if kinetics_ytid(p) in wanted_set]
    found = {kinetics_ytid(p) for p, _, _ in kept}
    missing = sorted(wanted_set - found)

    if class_map_in is not None:
        with open_list_file(class_map_in) as f:
            mapping = {int(a): int(b) for a, b in (ln.split() for ln in f if ln.strip())}
        bad = sorted({lab for _, _, lab in kept if lab not in mapping})
        if bad:
            raise ValueError(f"{class_map_in}: K400 labels {bad[:10]} of kept lines have no K200 label")
    else:
        mapping = {old: new for new, old in enumerate(sorted({lab for _, _, lab in kept}))}
    if len(mapping) != expected_classes:
        logger.warning("make_mini_kinetics200: %d classes (expected %d)", len(mapping), expected_classes)

    Path(out_list).write_text("".join(f"{p} {n} {mapping[lab]}\n" for p, n, lab in kept))
    if class_map_out is not None:
        Path(class_map_out).write_text("".join(f"{o} {n}\n" for o, n in sorted(mapping.items())))
    if classes_out is not None:
        if k400_classes is None:
            raise ValueError("classes_out needs k400_classes (the K400 class names, one per line)")
        k400 = _read_names(k400_classes)
        inverse = sorted(mapping.items(), key=lambda kv: kv[1])
        Path(classes_out).write_text("".join(f"{k400[o]}\n" for o, _ in inverse))
    summary = PrepareSummary("make_mini_kinetics200", done=len(kept), skipped=len(rows) - len(kept),
                             failed_paths=[(y, "YouTube id not found in the K400 list") for y in missing])
    summary.extra.update(missing_ids=missing, num_classes=len(mapping), label_map=mapping,
                         num_ids=len(wanted_set))
    if missing:
        logger.warning("make_mini_kinetics200: %d of %d ids not found in %s", len(missing), len(wanted_set),
                       k400_list)
    logger.info("%s; %d classes -> %s", summary, len(mapping), out_list)
    return summary


# -------------------------------------------------------------------------------- scan_videos
# A full-decode scan reads every frame through load_clip, this many bytes of RGB frames at a time.
_SCAN_CHUNK_BYTES = 64 << 20


def _problem(err: BaseException) -> str:
    """What is wrong with a file, without repeating its path (the scan reports it beside)."""
    cause = getattr(err, "cause", None)
    if isinstance(err, DecodeError) and cause is not None:
        return f"{type(err).__name__}: {cause}"
    return f"{type(err).__name__}: {err}"


def _count_decoded(path: str) -> int:
    """Frames of the first video stream, decoded from start to end (the reader's definition of
    the frame count), independent of the packet index."""
    n = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for _ in container.decode(stream):
                n += 1
        except av.FFmpegError as err:
            raise ValueError(f"decoding failed after {n} frames ({err})") from err
    return n


def _scan_one(job: tuple[str, bool]) -> tuple[str, str, Any]:
    """Check one file the way training reads it: the reader's packet index (``probe``); with
    ``full_decode`` also every frame through ``load_clip`` and a decode from start to end whose
    frame count must equal the index's."""
    path, full_decode = job
    from tcpnet.data.clip import load_clip, probe

    try:
        info = probe(path)
        n = info.num_frames
        if n < 1:
            return ("failed", path, "no frames")
        if full_decode:
            chunk = max(1, _SCAN_CHUNK_BYTES // max(1, info.width * info.height * 3))
            for start in range(0, n, chunk):
                load_clip(path, np.arange(start, min(n, start + chunk)), threads=1)
            decoded = _count_decoded(path)
            if decoded != n:
                return ("failed", path, f"the packet index has {n} frames but decoding gives {decoded}")
        return ("done", path, n)
    except Exception as err:  # noqa: BLE001 - every reader error marks the file bad, with its type
        return ("failed", path, _problem(err))


def scan_videos(
    root: PathLike,
    *,
    full_decode: bool = False,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    workers: Optional[int] = 1,
    progress: bool = True,
) -> list[tuple[str, str]]:
    """Find unreadable videos under ``root``: ``[(path, problem)]``, sorted by path, paths named like
    videos that are none included (a FIFO, a directory, a dangling link or a link loop: never
    opened, so a FIFO cannot block the scan).  By default a file passes if
    the reader can build its packet index (``tcpnet.data.clip.probe``: no video stream, corrupt
    or truncated packets fail); ``full_decode`` also reads every frame through
    ``tcpnet.data.load_clip``, as training does, and decodes the file from start to end to
    compare the frame count with the index, so it is at least as strict as the reader (and
    decodes every file about twice)."""
    summary = PrepareSummary("scan_videos")
    jobs = [(str(p), full_decode) for p in find_videos(root, extensions, summary)]
    _collect(summary, _run(_scan_one, jobs, _default_workers(workers), "scan videos", progress))
    return sorted(summary.failed_paths)
