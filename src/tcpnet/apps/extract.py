"""``tcpnet extract``: the features people reuse, for every video of a list, in sharded safetensors.

``level="head"`` stores the TCP vector (the normalised covariance, ``model.forward_features``);
``level="backbone"`` the backbone's maps averaged over T', h and w (``(C,)`` per view). Each video
is one row ``(V, D)``: its V test views kept apart (crop-major, as ``tcpnet test`` orders them);
``features[row].mean(0)`` is the fused vector.

Files in the output folder:

* ``features-r<rank>-<k>.safetensors``: tensor ``features`` (N, V, D) float32, one row per
  video of the shard (at most ``shard_size``), the paths in the metadata (``videos``, JSON);
* ``index.json``: model, checkpoint, level, views, dim, and ``videos``: path -> ``{"shard",
  "row", "label"}``, or ``{"error", "label"}`` for a video that could not be read;
* ``job.json`` (the settings; a rerun with others is refused) and ``journal/rank<r>.jsonl`` (one
  line per committed shard, written after the shard): what a rerun after a kill skips.

Under torchrun each rank takes every world-size-th remaining video and writes its own shards;
rank 0 writes the index once all are done.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from tcpnet.apps.collection import (
    Collection, Job, RunStats, build_clip_dataset, file_sha256, open_append, ranks, read_lines,
    run_collection,
)
from tcpnet.checkpoints.io import atomic_write
from tcpnet.config import parse_views

logger = logging.getLogger(__name__)

__all__ = ["LEVELS", "ExtractOptions", "ExtractResult", "FeatureShards", "video_features", "extract_features",
           "extract_from_checkpoint"]

LEVELS = ("head", "backbone")
INDEX_VERSION = 1
_SHARD = re.compile(r"features-r(\d+)-(\d+)\.safetensors$")
# what checkpoints.io.atomic_write leaves when a kill lands mid-write: ".<name>.<random>.tmp"
_PARTIAL = re.compile(r"\.(features-r(\d+)-\d+\.safetensors|index\.json)\..*\.tmp$")


@dataclass
class ExtractOptions:
    """How to extract: feature ``level``, test ``views``, videos per shard, decoding workers,
    seconds one video may take to decode, and a progress bar."""

    level: str = "head"
    views: str = "1x1"
    shard_size: int = 1000
    workers: int = 0
    decode_timeout: Optional[float] = 60.0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"--level: expected one of {LEVELS}, got {self.level!r}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size: expected >= 1 videos per shard, got {self.shard_size}")
        parse_views(self.views)


@dataclass
class ExtractResult:
    """Where the features are and what happened (the counts are over the whole set)."""

    out_dir: Path
    index: Path
    num_videos: int
    bad: List[Tuple[str, str]] = field(default_factory=list)  # (path, reason)
    stats: Optional[RunStats] = None


@torch.no_grad()
def video_features(model: nn.Module, views: torch.Tensor, level: str = "head") -> torch.Tensor:
    """(V, 3, T, H, W) views of one video -> (V, D) float32: the head's vector, or the backbone's
    maps averaged over T', h and w."""
    if level == "head":
        return model.forward_features(views).float()
    maps, t = model.backbone_maps(views), model.head_segments()
    return maps.reshape(views.shape[0], t, *maps.shape[1:]).float().mean(dim=(1, 3, 4))


class FeatureShards:
    """The :class:`~tcpnet.apps.collection.Sink` of extract: rows buffered per rank, a shard written
    atomically every ``shard_size`` videos, then its journal line; rank 0 merges the index."""

    def __init__(self, model: nn.Module, coll: Collection, out_dir: Path, job: Dict[str, Any],
                 options: ExtractOptions) -> None:
        self.model, self.coll, self.out, self.job, self.options = model, coll, out_dir, job, options
        self.rank = 0
        self.rows: List[Tuple[str, torch.Tensor]] = []
        self.bad: Dict[str, str] = {}
        self.count = 0  # videos (good or bad) since the last commit
        self.journal_file = out_dir / "journal" / "rank0.jsonl"
        self.number = 0

    # ------------------------------------------------------------------ Sink
    def repair(self, rank: int) -> None:
        """Cut this rank's torn journal line; remove its tmp files and shards the journal never got."""
        self.rank = rank
        self.journal_file = self.out / "journal" / f"rank{rank}.jsonl"
        open_append(self.journal_file).close()
        self.number = len(read_lines(self.journal_file))
        for path in self.out.glob(f"features-r{rank}-*"):
            m = _SHARD.match(path.name)
            if m and int(m.group(2)) >= self.number:
                logger.info("removing %s (written by a run that was stopped before committing it)", path)
                path.unlink()
        for path in self.out.glob(".*.tmp"):
            m = _PARTIAL.match(path.name)
            if m and (m.group(2) is None and rank == 0 or m.group(2) == str(rank)):
                logger.info("removing %s (a write that a stopped run left half-done)", path)
                path.unlink()

    def committed(self) -> Set[str]:
        return {p for e in self._entries() for p in list(e["videos"]) + list(e["bad"])}

    def is_complete(self) -> bool:
        return (self.out / "index.json").is_file()

    def put(self, index: int, views: Optional[torch.Tensor], error: Optional[str]) -> None:
        path = self.coll.records[index].path
        if error is None:
            feats = video_features(self.model, views.to(_device(self.model)), self.options.level).cpu()
            if bool(torch.isfinite(feats).all()):
                self.rows.append((path, feats))
            else:
                error = f"{path}: the model gave NaN or infinite features"
        if error is not None:
            logger.warning("bad video: %s", error)
            self.bad[path] = error
        self.count += 1
        if self.count >= self.options.shard_size:
            self.close()

    def close(self) -> None:
        """Commit: the shard file (tmp, fsync, rename), then the journal line naming its videos."""
        if not self.count:
            return
        name = None
        if self.rows:
            from safetensors.torch import save_file

            name = f"features-r{self.rank}-{self.number:05d}.safetensors"
            tensors = {"features": torch.stack([f for _, f in self.rows]).contiguous()}
            metadata = {"videos": json.dumps([p for p, _ in self.rows]), "level": self.options.level,
                        "views": self.options.views}
            atomic_write(self.out / name, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        entry = {"shard": name, "videos": [p for p, _ in self.rows], "bad": self.bad}
        with open_append(self.journal_file) as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.number += 1
        self.rows, self.bad, self.count = [], {}, 0

    def merge(self) -> None:
        """index.json from every rank's journal (any world size); shards no journal names are removed."""
        videos: Dict[str, Dict[str, Any]] = {}
        shards, dim = [], None
        for e in self._entries():
            if e["shard"] is not None:
                shards.append(e["shard"])
                for row, p in enumerate(e["videos"]):
                    videos[p] = {"shard": e["shard"], "row": row}
            videos.update({p: {"error": reason} for p, reason in e["bad"].items()})
        if shards:
            from safetensors import safe_open

            with safe_open(str(self.out / shards[0]), "pt") as f:
                dim = int(f.get_slice("features").get_shape()[-1])
        for path in self.out.glob("features-r*"):
            if path.name not in set(shards):
                path.unlink()
        ordered = {}
        for i, p in enumerate(self.coll.paths):
            ordered[p] = dict(videos[p], label=self.coll.label(i))
        index = dict(self.job, format="tcpnet-features", version=INDEX_VERSION, dim=dim, dtype="float32",
                     tensor="features", num_videos=len(ordered), num_bad=sum("error" in v for v in ordered.values()),
                     class_names=self.coll.class_names, shards=sorted(shards), videos=ordered)
        atomic_write(self.out / "index.json", lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1) + "\n"))

    def _entries(self) -> List[Dict[str, Any]]:
        return [e for path in sorted((self.out / "journal").glob("rank*.jsonl")) for e in read_lines(path)]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def extract_features(model: nn.Module, coll: Collection, out_dir: str, options: ExtractOptions,
                     checkpoint: Optional[str] = None) -> ExtractResult:
    """Extract the features of every video of ``coll`` into ``out_dir`` (see the module doc),
    resuming a run stopped part way; call once per rank under torchrun (after
    :func:`~tcpnet.engine.distributed.init_distributed`)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    crops, clips = parse_views(options.views)
    job = {"command": "extract", "model": getattr(model, "model_name", None), "checkpoint": checkpoint,
           "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None, "level": options.level,
           "views": options.views, "num_views": crops * clips, "list": coll.source,
           "root": coll.root, "list_sha256": coll.digest()}
    compare = ("level", "views", "checkpoint_sha256", "list_sha256")
    if checkpoint is None:  # a model given in memory: its weights identify it
        job["checkpoint_sha256"] = _weights_digest(model)
    model.eval()
    sink = FeatureShards(model, coll, out, job, options)
    dataset = build_clip_dataset(model, coll, options.views, options.decode_timeout)
    stats = run_collection(Job(out / "job.json", job, compare, str(out)), coll, sink, dataset, options.workers,
                           options.progress)
    index = json.loads((out / "index.json").read_text())
    bad = [(p, v["error"]) for p, v in index["videos"].items() if "error" in v]
    return ExtractResult(out, out / "index.json", index["num_videos"], bad, stats)


def extract_from_checkpoint(checkpoint: str, coll: Collection, out_dir: str, options: ExtractOptions,
                            device: str = "auto") -> ExtractResult:
    """:func:`extract_features` with the model of ``checkpoint``, on this rank's device (torchrun-aware)."""
    from tcpnet.checkpoints import build_model_from_checkpoint

    with ranks(device) as info:
        model = build_model_from_checkpoint(checkpoint).to(info.device)
        return extract_features(model, coll, out_dir, options, checkpoint=checkpoint)


def _weights_digest(model: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
