"""What the demo shows besides its table: a test report per model (``tcpnet test --report`` on the
validation videos) and explain sheets of one video per order pair, as recorded and time-reversed,
for every model. An order-blind head gives the reversed clip the same probabilities (its frame
importance is the forward one read backwards), while TCP's prediction flips with the order."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import numpy as np
from torch import nn

__all__ = ["write_model_report", "explain_order_pairs"]


def write_model_report(cfg: Any, checkpoint: Union[str, Path], out_dir: Union[str, Path], worst: int = 8) -> Path:
    """Test ``checkpoint`` on the config's validation list (1x1 view, the config's fusion) into
    ``out_dir`` and write ``out_dir/report.html``; returns the report's path."""
    from tcpnet.apps.report import write_test_report
    from tcpnet.apps.test import run_test

    result = run_test(cfg, str(checkpoint), views="1x1", output_dir=out_dir, progress=False)
    return write_test_report(result, cfg, worst=worst)


def _first_video_per_class(list_file: Path) -> Dict[int, str]:
    """``label -> path`` of the first video of each class in a ``path num_frames label`` list."""
    first: Dict[int, str] = {}
    for line in list_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            first.setdefault(int(parts[2]), parts[0])
    return first


def explain_order_pairs(models: Mapping[str, nn.Module], data_dir: Union[str, Path],
                        out_dir: Union[str, Path]) -> List[Path]:
    """For each class pair (2k, 2k+1) of the synthetic set, the first validation video of class
    2k explained by every model, as recorded and with its sampled frames reversed: sheets
    ``<class>_<model>.png`` and ``<class>_reversed_<model>.png`` in ``out_dir``."""
    from tcpnet.apps.explain import explain_frames, explain_video, write_explanation

    data = Path(data_dir)
    names = [n for n in (data / "classes.txt").read_text().splitlines() if n.strip()]
    first = _first_video_per_class(data / "val.txt")
    sheets: List[Path] = []
    for k in range(0, len(names) - 1, 2):
        if k not in first:
            continue
        for label, model in models.items():
            tag = label.lower()
            e = explain_video(model, data / first[k], class_names=names)
            e.video = first[k]
            sheets.append(write_explanation(e, out_dir, f"{names[k]}_{tag}", mp4=False)["sheet"])
            r = explain_frames(model, np.ascontiguousarray(e.frames[0][::-1]), class_names=names)
            r.video = f"{first[k]}, frames reversed"
            r.frame_indices = [e.frame_indices[0][::-1]] if e.frame_indices else None
            sheets.append(write_explanation(r, out_dir, f"{names[k]}_reversed_{tag}", mp4=False)["sheet"])
    return sheets
