"""CPU demo: TCP vs GAP on the synthetic order-dependent dataset (tcpnet.tools.synthetic).

Each class pair of that dataset is a time reversal (move right / move left, grow / shrink, ...),
so an order-blind head (global average pooling over time) is at chance *within* a pair, while
TCP's temporal attention sees the order. ``run_demo`` generates the data (once), trains
``configs/demo/tcp.yaml`` (tcp_tiny) and ``configs/demo/gap.yaml`` (tsn_tiny) with the ordinary
``train`` loop, evaluates both, prints a side-by-side table and writes ``demo.png``, a test
report per model (``<out>/<tcp|gap>/test/report.html``) and explain sheets of one video per
order pair (``<out>/explain/``, see :mod:`tcpnet.apps.demo_visuals`).
What makes it fast on a 2-core CPU is set in ``configs/demo/tcp.yaml``, with the reasons.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch

from tcpnet.config import find_config, load_config


__all__ = ["run_demo", "make_demo_data", "within_pair_accuracy", "DEMO_DATA", "demo_config_path"]

# The synthetic set the demo trains on: 8 classes = 4 time-reversal pairs, 64x64 frames.
DEMO_DATA = dict(num_classes=8, train_per_class=48, val_per_class=64, num_frames=24, size=64)
QUICK_DATA = dict(num_classes=8, train_per_class=12, val_per_class=4, num_frames=16, size=64)
QUICK_TRAIN = ["train.epochs=2"]


def demo_config_path(kind: str) -> Path:
    """The shipped ``demo/<kind>.yaml`` (kind: tcp | gap)."""
    return find_config(f"demo/{kind}")


def within_pair_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Percent of videos whose score for their own class beats the score of its time-reversed
    twin (classes 2k and 2k+1 form a pair): accuracy of the binary 'which order?' question."""
    twin = targets ^ 1
    own = scores.gather(1, targets.view(-1, 1)).squeeze(1)
    other = scores.gather(1, twin.view(-1, 1)).squeeze(1)
    return 100.0 * (own > other).float().mean().item()


def make_demo_data(out_dir: Union[str, Path], quick: bool = False, *, seed: int = 0,
                   data_settings: Optional[Dict[str, Any]] = None) -> Path:
    """The demo's synthetic set in ``<out_dir>/data`` (``data_quick`` for ``quick``, so a quick run
    never clobbers the full data): reused when it is there with these settings, else written,
    replacing a synthetic set of other settings there (only the files its manifest lists); a folder
    that holds anything else is refused. Returns the folder."""
    from tcpnet.tools.synthetic import OtherSettingsError, make_synthetic_dataset

    data_dir = Path(out_dir) / ("data_quick" if quick else "data")
    settings = dict(QUICK_DATA if quick else DEMO_DATA, **(data_settings or {}))
    try:
        make_synthetic_dataset(data_dir, seed=seed, progress=False, **settings)
    except OtherSettingsError:  # our synthetic set, other settings: replace it
        print(f"tcpnet demo: regenerating {data_dir} (it holds other synthetic data)")
        make_synthetic_dataset(data_dir, seed=seed, progress=False, overwrite=True, **settings)
    return data_dir


def _plot(results: Dict[str, Dict[str, Any]], png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tcpnet.engine.logs import read_jsonl

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = list(results)
    x = range(len(labels))
    ax1.bar([i - 0.2 for i in x], [results[k]["top1"] for k in labels], 0.4, label="top-1 (8 classes)")
    ax1.bar([i + 0.2 for i in x], [results[k]["within_pair"] for k in labels], 0.4, label="within-pair (order)")
    ax1.axhline(50, ls="--", c="grey", lw=1)
    ax1.text(len(labels) - 0.5, 51, "within-pair chance", ha="right", va="bottom", fontsize=8, color="grey")
    ax1.axhline(12.5, ls=":", c="grey", lw=1)
    ax1.set_xticks(list(x), labels)
    ax1.set_ylim(0, 100)
    ax1.set_ylabel("accuracy on the synthetic val set (%)")
    ax1.legend(loc="upper right", fontsize=8)
    for k in labels:  # train top-1 after every epoch, val top-1 where validated (train.eval_every)
        recs = [r for r in read_jsonl(Path(results[k]["output_dir"]) / "metrics.jsonl") if r["event"] == "epoch"]
        line, = ax2.plot([r["epoch"] + 1 for r in recs], [r["train_top1"] for r in recs], "--", lw=1,
                         label=f"{k} train top-1")
        val = [r for r in recs if r.get("val_top1") is not None]
        ax2.plot([r["epoch"] + 1 for r in val], [r["val_top1"] for r in val], "-o", color=line.get_color(),
                 label=f"{k} val top-1")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 100)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle("TCP vs GAP on time-reversal class pairs")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def run_demo(out_dir: Union[str, Path] = "demo_output", quick: bool = False, *, seed: int = 0,
             device: str = "cpu", overrides: Sequence[str] = (), num_workers: Optional[int] = None,
             data_settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Generate data (if absent), train TCP and GAP, evaluate, print a table, write demo.png and
    results.json into ``out_dir``. ``quick`` shrinks data and epochs to a smoke test (minutes
    -> seconds; its accuracies mean nothing). ``overrides`` apply to both configs."""
    from tcpnet.data.cache import clear_shared_cache
    from tcpnet.apps.demo_visuals import explain_order_pairs, write_model_report
    from tcpnet.engine.checkpoint import CHECKPOINT_FILES
    from tcpnet.engine.train import train

    t_start = time.time()
    out = Path(out_dir)
    settings = dict(QUICK_DATA if quick else DEMO_DATA, **(data_settings or {}))
    data_dir = make_demo_data(out, quick, seed=seed, data_settings=data_settings)
    timings = {"data": time.time() - t_start}

    results: Dict[str, Dict[str, Any]] = {}
    models: Dict[str, Any] = {}
    for kind, label in (("tcp", "TCP"), ("gap", "GAP")):
        ov = [f"data.root={data_dir}", f"data.train_list={data_dir / 'train.txt'}",
              f"data.val_list={data_dir / 'val.txt'}", f"data.class_names={data_dir / 'classes.txt'}",
              f"output_dir={out / kind}", f"seed={seed}", f"device={device}", "train.auto_resume=false"]
        if num_workers is not None:
            ov.append(f"data.num_workers={num_workers}")
        cfg = load_config(demo_config_path(kind), ov + (QUICK_TRAIN if quick else []) + list(overrides))
        for name in (*CHECKPOINT_FILES, "metrics.jsonl"):  # the demo's own previous run: trained anew
            (out / kind / name).unlink(missing_ok=True)
        t0 = time.time()
        res = train(cfg)
        timings[f"train_{kind}"] = time.time() - t0

        # the last epoch's validation (final weights, every val video): overall and within-pair
        ev = res["last_eval"]
        results[label] = {"model": cfg.model.name, "top1": ev.metrics["top1"],
                          "within_pair": within_pair_accuracy(ev.scores, ev.targets.long()),
                          "mean_class_acc": ev.metrics["mean_class_acc"], "val_videos": ev.metrics["num_videos"],
                          "epochs": cfg.train.epochs, "train_seconds": timings[f"train_{kind}"],
                          "train_clips_per_s": res["final"]["clips_per_s"],
                          "output_dir": str(out / kind)}
        t0 = time.time()
        results[label]["report"] = str(write_model_report(cfg, res["last_checkpoint"], out / kind / "test"))
        models[label] = res["model"]
        timings[f"report_{kind}"] = time.time() - t0

    t0 = time.time()
    sheets = explain_order_pairs(models, data_dir, out / "explain")
    timings["explain"] = time.time() - t0
    clear_shared_cache()  # the decoded demo videos (data.cache_decoded_mb): not needed any more
    timings["total"] = time.time() - t_start
    lines = ["", f"{'head':<6}{'model':<10}{'top-1 (8 cls)':>15}{'within-pair':>13}{'train s':>9}",
             "-" * 53]
    for label, r in results.items():
        lines.append(f"{label:<6}{r['model']:<10}{r['top1']:>14.1f}%{r['within_pair']:>12.1f}%{r['train_seconds']:>9.0f}")
    lines += ["", "within-pair = picks the right order between a class and its time reversal (chance 50%).",
              f"total {timings['total']:.0f} s (data {timings['data']:.0f} s, training "
              f"{timings['train_tcp'] + timings['train_gap']:.0f} s, test reports "
              f"{timings['report_tcp'] + timings['report_gap']:.0f} s, explain sheets {timings['explain']:.0f} s)", ""]
    lines += [f"report ({label}): {r['report']}" for label, r in results.items()]
    lines.append(f"explain sheets: {out / 'explain'} (one video per order pair, as recorded and time-reversed)")
    table = "\n".join(lines)
    print(table)
    _plot(results, out / "demo.png")
    summary = {"results": results, "timings": timings, "data": settings, "quick": quick, "table": table,
               "plot": str(out / "demo.png"), "explain_sheets": [str(p) for p in sheets]}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary
