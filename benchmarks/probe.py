"""Frozen-backbone probing with and without the feature cache (``data.cache_features``), through
the training engine (``tcpnet.engine.train``), for each model in the same run: epoch 1 of the
cached run decodes every video once, runs the backbone and writes the cache (its time includes
that build); later epochs read the cached maps and train only the head and classifier. The
baseline is the same probing run without a cache (every epoch decodes and runs the frozen
backbone). Prints each epoch's seconds and later-epoch speed-up = uncached / cached (median of
the epochs after the first). Target: later epochs >= 20x faster. With ``--val`` both runs also
validate every epoch on a val split (``--val-videos``, the cached run on the cached maps of its
centre views, built in epoch 1) and an epoch's seconds include its validation.

    python benchmarks/probe.py                  # 32 videos, 8x112^2, tcp_videomae_vit_small and tcp_tsn_r50, 3 epochs
    python benchmarks/probe.py --models tcp_tsn_r50 --val   # epochs with validation of 16 videos
    python benchmarks/probe.py --quick          # smoke run: tcp_tiny, 8 videos, 4x64^2, 2 epochs
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Dict, List

import torch

from _common import format_table, machine_summary
from tcpnet.config import load_config
from tcpnet.engine.train import train
from tcpnet.tools.synthetic import make_synthetic_dataset


def epoch_records(out: Path) -> List[Dict]:
    """The epoch records of a run's metrics.jsonl."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "epoch"]


def seconds(record: Dict) -> float:
    """An epoch's seconds: training plus validation (when it validated)."""
    return record["epoch_time"] + (record.get("val_time") or 0.0)


def run(data: Path, out: Path, model: str, args: argparse.Namespace, *extra: str) -> List[Dict]:
    """One frozen-probing run of ``args.epochs`` epochs; its epoch records."""
    overrides = [f"model.name={model}", f"model.num_segments={args.frames}", f"data.root={data}",
                 f"data.train_list={data}/train.txt", *([f"data.val_list={data}/val.txt"] if args.val else []),
                 f"data.crop_size={args.crop}",
                 f"data.scale_size={args.crop}", f"data.num_workers={args.workers}",
                 f"train.epochs={args.epochs}", f"train.batch_size={args.batch}", "train.freeze_backbone=true",
                 "train.lr=0.01", "train.lr_steps=[100]", "train.log_every=1000", f"test.batch_size={args.batch}",
                 f"output_dir={out}", "seed=0", "device=cpu", *extra]
    train(load_config(None, overrides))
    return epoch_records(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tcp_videomae_vit_small,tcp_tsn_r50")
    p.add_argument("--videos", type=int, default=32, help="train videos (4 classes)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--val", action="store_true", help="validate every epoch; epoch times include validation")
    p.add_argument("--val-videos", type=int, default=16, help="val videos with --val (4 classes)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.models, args.videos, args.frames, args.crop, args.epochs = "tcp_tiny", 8, 4, 64, 2
    print(f"# {machine_summary()}")
    print(f"# {args.videos} synthetic H.264 videos, {args.frames}x{args.crop}^2, batch {args.batch}, "
          f"{args.epochs} epochs, frozen backbone, cache {args.dtype}, data.num_workers={args.workers}, "
          + (f"validation of {args.val_videos // 4 * 4} videos every epoch (included in epoch s)" if args.val
             else "no validation"))
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        make_synthetic_dataset(data, seed=0, num_classes=4, train_per_class=args.videos // 4,
                               val_per_class=max(1, args.val_videos // 4),
                               num_frames=32, size=max(128, args.crop), progress=False)
        for model in args.models.split(","):
            plain = run(data, tmp / f"{model}-plain", model, args)
            cached = run(data, tmp / f"{model}-cached", model, args, f"data.cache_features={tmp / f'{model}-cache'}",
                         f"data.cache_dtype={args.dtype}")
            later = [statistics.median(seconds(r) for r in recs[1:]) for recs in (plain, cached)]
            assert plain[0]["train_clips"] == cached[0]["train_clips"] == args.videos // args.batch * args.batch
            if args.val:
                assert plain[-1]["val_num_videos"] == cached[-1]["val_num_videos"] == args.val_videos // 4 * 4
            rows.append([model, f"{seconds(plain[0]):.2f}", f"{seconds(cached[0]):.2f}",
                         f"{cached[0].get('cache_build_s', 0.0):.2f}", f"{later[0]:.3f}", f"{later[1]:.3f}",
                         f"{later[0] / later[1]:.1f}x"])
    print(format_table(["model", "epoch 1 s, no cache", "epoch 1 s, cache (build)", "of which build s",
                        "later epoch s, no cache", "later epoch s, cache", "later: no cache / cache"], rows))


if __name__ == "__main__":
    main()
