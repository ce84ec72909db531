"""Running a model over a large collection of videos: sharded over ranks, resumable after a kill.

The one owner of that machinery, shared by ``tcpnet extract`` (:mod:`tcpnet.apps.extract`) and
``tcpnet predict --list`` (:mod:`tcpnet.apps.predict`):

* :func:`read_collection`: the videos, from a list file of any registered format, a plain list of
  paths (one per line) or paths given on the command line; every path once.
* :func:`claim_output`: a run's settings are written beside its output (``job.json``); a rerun
  with other settings is refused with one line naming what differs.
* :func:`read_lines` / :func:`open_append`: JSON-lines files that a kill may have cut in the
  middle of a line: the torn last line is ignored when read and cut off before appending.
* :func:`my_share`: what is left, minus what any rank has committed, split ``i % world == rank``.
* :func:`iter_clips`: each video of a share as its test-mode views, or the reason it is bad.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Protocol, Sequence, Set, TextIO, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tcpnet.checkpoints.io import atomic_write
from tcpnet.config import DataConfig
from tcpnet.data.errors import DecodeError
from tcpnet.data.formats import ListSource, frame_template_for, get_list_format
from tcpnet.data.frame_template import DEFAULT_FRAME_TEMPLATE
from tcpnet.data.records import RecordList, VideoRecord
from tcpnet.engine.distributed import DistInfo, barrier, cleanup_distributed, get_rank, get_world_size, init_distributed

logger = logging.getLogger(__name__)

__all__ = ["Collection", "read_collection", "looks_like_list", "file_sha256", "claim_output", "read_lines",
           "open_append", "my_share", "build_clip_dataset", "iter_clips", "progress_bar", "Sink", "Job", "RunStats",
           "run_collection", "ranks"]

LIST_SUFFIXES = (".txt", ".csv", ".lst", ".list", ".tsv")


@dataclass
class Collection:
    """The videos of a run, in order: ``records`` (paths relative to ``root``, labels when the list
    has them), where they came from (``source``) and the list's frame-folder naming."""

    records: List[VideoRecord]
    root: str
    source: str
    has_labels: bool
    frame_template: str = DEFAULT_FRAME_TEMPLATE
    class_names: Optional[List[str]] = None

    @property
    def paths(self) -> List[str]:
        return [r.path for r in self.records]

    def label(self, i: int) -> Any:
        """The list's label of video ``i`` (an int or a list of ints), None without one."""
        return self.records[i].label if self.has_labels else None

    def digest(self) -> str:
        """sha256 of root, paths and labels: two runs over the same collection share it."""
        h = hashlib.sha256(os.path.abspath(self.root or ".").encode())
        for i, r in enumerate(self.records):
            h.update(f"\n{r.path}\t{json.dumps(self.label(i))}".encode())
        return h.hexdigest()


def looks_like_list(inputs: Sequence[str]) -> bool:
    """One argument that is a text file named like a list (``.txt``, ``.csv``, ...), not a video."""
    return len(inputs) == 1 and os.path.isfile(inputs[0]) and inputs[0].lower().endswith(LIST_SUFFIXES)


def _first_line(path: str) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return next((line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")), "")


def _is_plain_list(path: str, root: str) -> bool:
    """A list of paths only: its first line is one field, or names an existing file or folder."""
    first = _first_line(path)
    return len(first.split()) == 1 or os.path.exists(os.path.join(root, first) if root else first)


def _read_plain(path: str) -> List[VideoRecord]:
    with open(path, encoding="utf-8-sig") as f:
        return [VideoRecord(line.strip(), None, -1, line=n) for n, line in enumerate(f, 1)
                if line.strip() and not line.lstrip().startswith("#")]


def read_collection(inputs: Sequence[str] = (), list_file: Optional[str] = None, *, root: str = "",
                    list_format: str = "auto") -> Collection:
    """The videos of ``list_file`` (any registered ``list_format``; ``auto`` also takes a plain
    list of paths, one per line) or else the paths ``inputs``. A path listed twice is an error
    naming both lines: every video is to be processed exactly once."""
    if list_file is None:
        if not inputs:
            raise ValueError("no videos: give VIDEO paths or a list file")
        coll = Collection([VideoRecord(str(v), None, -1) for v in inputs], root, f"{len(inputs)} video(s)", False)
    else:
        if not os.path.exists(list_file):
            raise FileNotFoundError(f"{list_file}: list file not found")
        if list_format in ("auto", "paths") and (list_format == "paths" or _is_plain_list(list_file, root)):
            coll = Collection(_read_plain(list_file), root, list_file, False)
        else:
            data = DataConfig(root=root, list_format=list_format)
            records: RecordList = get_list_format(list_format).read(ListSource(list_file, "test", data))
            coll = Collection(list(records), root, list_file, True, frame_template_for(data, list_file),
                              records.class_names)
        if not coll.records:
            raise ValueError(f"{list_file}: no videos")
    _check_unique(coll)
    return coll


def _check_unique(coll: Collection) -> None:
    seen: Dict[str, VideoRecord] = {}
    for r in coll.records:
        if r.path in seen:
            where = f"{coll.source}:{r.line}" if r.line else coll.source
            raise ValueError(f"{where}: {r.path} is listed twice (also line {seen[r.path].line}); "
                             f"each video is processed once")
        seen[r.path] = r


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (a checkpoint rewritten in place is another checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def claim_output(job_file: Path, job: Dict[str, Any], compare: Sequence[str], rank: int = 0,
                 output: Optional[str] = None) -> bool:
    """Write ``job`` (a run's settings) to ``job_file``, or check it against the one there: returns
    True when resuming; a ValueError naming ``output`` and every key of ``compare`` that differs otherwise.
    Only rank 0 writes (atomically); every rank checks, so all refuse alike."""
    if job_file.is_file():
        old = json.loads(job_file.read_text())
        diff = [k for k in compare if old.get(k) != job.get(k)]
        if diff:
            what = ", ".join(f"{k} ({_short(old.get(k))}, now {_short(job.get(k))})" for k in diff)
            raise ValueError(f"{output or job_file}: made with a different {what}; use another --out, "
                             f"or delete it to start again")
        return True
    if rank == 0:
        job_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(job_file, lambda tmp: Path(tmp).write_text(json.dumps(job, indent=2) + "\n"))
    return False


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def read_lines(path: Path) -> List[Dict[str, Any]]:
    """The JSON objects of a JSON-lines file (none when absent). A last line without its newline
    is a write a kill interrupted: ignored. A bad line before it is an error naming file:line."""
    if not path.is_file():
        return []
    out = []
    lines = path.read_bytes().split(b"\n")
    for n, line in enumerate(lines[:-1], 1):  # lines[-1]: after the last newline (torn or empty)
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise ValueError(f"{path}:{n}: not a JSON line (the file was edited?)") from None
    return out


def open_append(path: Path) -> TextIO:
    """``path`` opened for appending lines, a torn last line (a kill mid-write) cut off first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            logger.info("%s: dropping an incomplete last line (%d bytes)", path, len(data) - keep)
            with open(path, "r+b") as f:
                f.truncate(keep)
    return open(path, "a", encoding="utf-8")


def my_share(coll: Collection, done: Set[str], rank: int, world_size: int) -> List[int]:
    """Indices of the videos not in ``done``, every ``world_size``-th from ``rank``: disjoint
    shares that cover the rest exactly once (whatever world size the earlier runs had)."""
    todo = [i for i, p in enumerate(coll.paths) if p not in done]
    return todo[rank::world_size]


def build_clip_dataset(model: nn.Module, coll: Collection, views: str, timeout: Optional[float]):
    """A test-mode VideoDataset over the collection with the model's input pipeline."""
    from tcpnet.data.dataset import DecodeSpec, VideoDataset

    decode = DecodeSpec(frame_template=coll.frame_template, timeout=timeout)
    return VideoDataset.from_config(coll.records, coll.root, model.input_config, mode="test", views=views,
                                    on_error="raise", min_frames=0, decode=decode)


class _Clips(Dataset):
    """Item ``k`` of ``indices``: (index, (V, 3, T, H, W) views or None, error or None)."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Tuple[int, Optional[torch.Tensor], Optional[str]]:
        i = self.indices[k]
        try:
            clip = self.dataset.load(i, np.random.default_rng(0))  # test sampling/crops are deterministic
        except (DecodeError, OSError) as e:
            return i, None, str(e) if isinstance(e, DecodeError) else f"{self.dataset.records[i].path}: {e}"
        return i, clip.unsqueeze(0) if clip.dim() == 4 else clip, None


def _first(batch: List[Any]) -> Any:
    return batch[0]


def iter_clips(dataset: Any, indices: Sequence[int], workers: int = 0) -> Iterator[Tuple[int, Optional[torch.Tensor],
                                                                                         Optional[str]]]:
    """(index, views, error) for each of ``indices`` in order, decoded by ``workers`` processes
    (0: here) while the model runs; a video that cannot be read gives its reason, not an exception."""
    loader = DataLoader(_Clips(dataset, indices), batch_size=1, num_workers=workers, collate_fn=_first,
                        prefetch_factor=2 if workers else None)
    yield from loader


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar in videos/s on stderr; disabled (``enabled`` false) on other ranks, with -q or off a TTY."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="video", disable=not enabled, dynamic_ncols=True)


# --------------------------------------------------------------------------- the run


class Sink(Protocol):
    """Where a run's results go: the output files of one command (extract, predict --list)."""

    def repair(self, rank: int) -> None:
        """Before anything is read: cut this rank's torn lines, drop its half-written files."""

    def committed(self) -> Set[str]:
        """Paths whose results any rank has committed (read by every rank, before any writes)."""

    def is_complete(self) -> bool:
        """Whether the merged output (the index, the one file) is already written."""

    def put(self, index: int, views: Optional[torch.Tensor], error: Optional[str]) -> None:
        """Compute and keep (or commit) the result of video ``index``."""

    def close(self) -> None:
        """Commit what is kept."""

    def merge(self) -> None:
        """Rank 0, once every rank has closed: the one output over all ranks."""


@dataclass(frozen=True)
class Job:
    """A run's settings (written to ``file``), the keys a rerun must share to resume, and the
    output's name for messages."""

    file: Path
    settings: Dict[str, Any]
    compare: Tuple[str, ...]
    output: str


@dataclass(frozen=True)
class RunStats:
    """What a run found and did: videos in all, committed before it, done by this rank now."""

    total: int
    committed_before: int
    done_here: int
    nothing_to_do: bool


def run_collection(job: Job, coll: Collection, sink: Sink, dataset: Any, workers: int = 0,
                   progress: bool = False) -> RunStats:
    """Every video of ``coll`` not yet committed, through ``sink``, this rank's share only; the
    ranks meet (barriers) so that all read the same committed set before any of them writes, and
    rank 0 merges once all are done. A complete output is left as it is (``nothing_to_do``)."""
    rank, world = get_rank(), get_world_size()
    claim_output(job.file, job.settings, job.compare, rank, job.output)
    barrier()
    claim_output(job.file, job.settings, job.compare, rank, job.output)  # ranks that looked before rank 0 wrote it
    sink.repair(rank)
    barrier()
    done = sink.committed() & set(coll.paths)
    complete = sink.is_complete()
    barrier()  # nobody commits before everyone has read
    left = len(coll.records) - len(done)
    if left == 0 and complete:
        sink.close()
        return RunStats(len(coll.records), len(done), 0, True)
    share = my_share(coll, done, rank, world)
    bar = progress_bar(len(share), progress and rank == 0, "videos")
    try:
        for i, views, error in iter_clips(dataset, share, workers):
            sink.put(i, views, error)
            bar.update()
    finally:
        bar.close()
    sink.close()
    barrier()
    if rank == 0:
        sink.merge()
    barrier()
    return RunStats(len(coll.records), len(done), len(share), False)


@contextmanager
def ranks(device: str = "auto") -> Iterator[DistInfo]:
    """This process's rank and device: the process group joined under torchrun, left on exit."""
    info = init_distributed(device)
    try:
        yield info
    finally:
        if info.world_size > 1:
            cleanup_distributed()
