"""``tcpnet stream --out``: the stream written to an mp4 with the current label drawn on it.

Frames come from the decoder thread and are encoded in a thread of their own, through a bounded
queue: encoding never holds up reading, and frames the encoder cannot keep up with are skipped
and counted (the file then plays shorter than the stream)."""
from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Deque, Dict, Optional, Tuple

import numpy as np

from tcpnet.data.writer import H264Writer
from tcpnet.viz.layout import even_size, label_bar

logger = logging.getLogger(__name__)

__all__ = ["OverlayWriter"]


class OverlayWriter(threading.Thread):
    """Encode frames put by another thread, each with the latest ``label`` (a top-k entry:
    ``{"label", "name", "prob"}``) drawn as a bar; ``fps()`` gives the stream's frame rate."""

    def __init__(self, path: str, fps: Callable[[], Optional[float]], max_pending: int = 64) -> None:
        super().__init__(name="tcpnet-stream-writer", daemon=True)
        self.path, self.fps = path, fps
        self.label: Optional[Dict[str, Any]] = None
        self.written = self.dropped = 0
        self._pending: Deque[np.ndarray] = collections.deque()
        self._max = max_pending
        self._cond = threading.Condition()
        self._done = False
        self._writer: Optional[H264Writer] = None
        self.error: Optional[BaseException] = None

    def put(self, rgb: np.ndarray) -> None:
        """Queue a frame (never blocks: when the queue is full the frame is skipped)."""
        with self._cond:
            if len(self._pending) >= self._max:
                self.dropped += 1
                return
            self._pending.append(rgb)
            self._cond.notify()

    def _text(self) -> Tuple[str, float]:
        if self.label is None:
            return "...", 0.0
        name = self.label["name"] if self.label["name"] is not None else f"class {self.label['label']}"
        return f"{name} {self.label['prob']:.2f}", float(self.label["prob"])

    def _write(self, rgb: np.ndarray) -> None:
        frame = even_size(label_bar(rgb, *self._text()))
        if self._writer is None:
            fps = round(self.fps() or 25.0)
            self._writer = H264Writer(self.path, frame.shape[1], frame.shape[0], fps=max(1, fps),
                                      preset="veryfast")  # one x264 thread: the model needs the cores
        if frame.shape[:2] != (self._writer.height, self._writer.width):  # the stream changed size
            frame = np.zeros((self._writer.height, self._writer.width, 3), np.uint8)
        self._writer.write(frame)
        self.written += 1

    def run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._done:
                        self._cond.wait(0.1)
                    if not self._pending and self._done:
                        return
                    rgb = self._pending.popleft()
                self._write(rgb)
        except BaseException as err:  # noqa: BLE001 - reported by finish()
            self.error = err

    def finish(self) -> Tuple[int, int]:
        """Write what is queued, close the file; returns (frames written, frames skipped)."""
        with self._cond:
            self._done = True
            self._cond.notify()
        if self.is_alive():
            self.join()
        if self._writer is not None:
            self._writer.close()
        if self.error is not None:
            logger.warning("%s: writing stopped: %s", self.path, self.error)
        elif self.written:
            logger.info("wrote %s (%d frames, %d skipped)", self.path, self.written, self.dropped)
        return self.written, self.dropped
