"""Run records on rank 0: JSON lines (metrics.jsonl), TensorBoard scalars, and a PNG of the
training curves drawn from the JSON lines at the end."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union


__all__ = ["RunLogger", "read_jsonl", "plot_curves", "jsonable"]


def jsonable(v: Any) -> Any:
    """``v`` with 0-d tensors/NumPy scalars as Python numbers, containers converted recursively
    and non-finite floats as JSON-safe values (NaN -> null, inf -> "inf")."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v


class RunLogger:
    """Append records to ``metrics.jsonl`` and scalars to TensorBoard (``tensorboard/``)."""

    def __init__(self, output_dir: Union[str, Path], enabled: bool = True, tensorboard: bool = True,
                 resume_step: Optional[int] = None) -> None:
        """``resume_step``: the global iteration a resumed run continues after; records of later
        steps (written before the run was killed, about to be redone) are dropped, in the JSON
        lines and in TensorBoard, so a resumed run's log has each step once."""
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.jsonl_path = self.output_dir / "metrics.jsonl"
        self.writer = None
        if enabled:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                self._rewind(resume_step)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                purge = None if resume_step is None else resume_step + 1
                self.writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"), purge_step=purge)

    def _rewind(self, step: int) -> None:
        if not self.jsonl_path.is_file():
            return
        kept = [line for line in self.jsonl_path.read_text().splitlines()
                if line.strip() and int(json.loads(line).get("step", 0) or 0) <= step]
        tmp = self.jsonl_path.with_name(f".{self.jsonl_path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.jsonl_path)

    def log(self, event: str, **fields: Any) -> None:
        """One JSON line ``{"event": ..., "time": ..., **fields}``."""
        if not self.enabled:
            return
        rec = {"event": event, "time": round(time.time(), 3), **{k: jsonable(v) for k, v in fields.items()}}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def scalars(self, step: int, values: Dict[str, Optional[float]]) -> None:
        """TensorBoard scalars ``tag -> value`` at global ``step`` (None values skipped)."""
        if self.writer is None:
            return
        for tag, v in values.items():
            if v is not None:
                self.writer.add_scalar(tag, float(v), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def read_jsonl(path: Union[str, Path]) -> List[Dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(jsonl_path: Union[str, Path], png_path: Union[str, Path]) -> None:
    """Loss and top-1 per epoch, train vs val, from the ``epoch`` records of metrics.jsonl.
    On resume the same epoch may appear twice; the last record of each epoch wins."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_epoch: Dict[int, Dict[str, Any]] = {}
    for rec in read_jsonl(jsonl_path):
        if rec.get("event") == "epoch":
            by_epoch[int(rec["epoch"])] = rec
    epochs = sorted(by_epoch)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "top1", "top-1 (%)")):
        for split, style in (("train", "-o"), ("val", "-s")):
            xs = [e + 1 for e in epochs if by_epoch[e].get(f"{split}_{key}") is not None]
            ys = [by_epoch[e - 1][f"{split}_{key}"] for e in xs]
            if xs:
                ax.plot(xs, ys, style, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
