"""Make docs/img/timeline_demo.png: the timeline of the demo's TCP model on validation videos of
the synthetic set played one after another.

    tcpnet demo                                  # trains demo_output/tcp/best.pt (or reuse a run)
    python docs/timeline_demo.py [demo_output]   # -> demo_output/timeline/sequence.{png,html,csv,json}

The sequence is one validation video of each of five classes, 1.5 s each (24 frames at 16 fps, the
length the model was trained on), so the windows are 1.5 s long (T=8 frames, a segment every
0.1875 s) and start every 0.375 s.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from tcpnet.apps.timeline import TimelineOptions, timeline_video, write_timeline
from tcpnet.checkpoints import build_model_from_checkpoint
from tcpnet.data import load_clip
from tcpnet.data.writer import write_video

CLASSES = ("move_right", "grow", "warm_to_cool", "rotate_ccw", "move_left")


def main(demo: Path) -> None:
    data = demo / "data"
    frames = []
    for name in CLASSES:
        clip = sorted((data / "videos" / "val" / name).glob("*.mp4"))[3]
        frames.append(load_clip(clip, range(24)).numpy())
    out = demo / "timeline"
    out.mkdir(parents=True, exist_ok=True)
    video = write_video(out / "sequence.mp4", np.concatenate(frames), fps=16, crf=18, gop=16)
    model = build_model_from_checkpoint(demo / "tcp" / "best.pt")
    tl = timeline_video(model, video, TimelineOptions(window=1.5, stride=0.375, thumbnails=10))
    files = write_timeline(tl, out, segments=True)
    here = Path(__file__).resolve().parent / "img" / "timeline_demo.png"
    shutil.copyfile(files["png"], here)
    for s in tl.segments():
        print(f"{s.start:5.2f}-{s.end:5.2f} s  {s.name:<14} {s.prob:.2f}")
    print(f"wrote {here} and {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo_output"))
