"""tcpnet timeline: window logits from the per-frame feature cache equal ``model(clip)`` for every
2-D model, the timeline of a real mp4 equals independent forwards on the frames ``load_clip``
gives, its top class switches at a cut between two classes, and the files, the ``--json`` lines,
smoothing, segments and bad files behave as documented.

Tolerance on logits: 1e-5 absolute. Both sides are the same operations on the same frames; only
the batches the backbone sees differ (frames of several windows at once vs one clip), which
changes the summation order inside convolutions. In float32 that alone moves a ResNet-50's
logits by about 1.5e-5 of their size (measured here: 7.6e-5 on logits of 5.5 between backbone
batches of 4 frames and of 3 + 1, and the float32 maps differ from float64 by 6e-5 of their
size: the rounding grows block by block), so comparisons that involve a large per-frame
backbone, or batches of windows, run in float64, where they are exact to ~1e-12 and any real
difference (a wrong frame, order, T or crop) is of order 1. A model that falls back to one
forward per window computes exactly what the reference does, so it stays in float32, and the
tiny models are tested in float32 through the file, as the command runs them.
BatchNorm statistics are calibrated on test-like frames first and the classifier scaled so that
logits have the magnitude of a trained model's (a randomly initialised deep net gives logits of
1e5, where any bound would only test their rounding)."""
from __future__ import annotations

import csv
import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tcpnet.apps.timeline import (TimelineOptions, merge_segments, score_windows, smooth_probabilities,
                                  timeline_video, timeline_videos, window_probabilities)
from tcpnet.apps.windows import FrameFeatureCache, Window, WindowGrid, shares_frames
from tcpnet.checkpoints.io import save_model
from tcpnet.data import load_clip
from tcpnet.data.transforms import CenterCrop, ResizeShorterSide, to_float
from tcpnet.models import build_model, list_models
from videos import make_frames, write_video

TOL = 1e-5
FPS = 16


def _frame_models() -> list:
    """Every registered model with a 2-D ("frames") backbone; built on the meta device (no
    weights) just to read the layout."""
    names = []
    for name in list_models():
        with torch.device("meta"):
            if build_model(name, num_classes=2).layout == "frames":
                names.append(name)
    return names


FRAME_MODELS = _frame_models()


def small_model(name: str, num_classes: int = 5, **kwargs) -> torch.nn.Module:
    """``name`` at crop 64 (scale 72), BatchNorm statistics set from one clip of test-like frames
    (train mode, momentum 1), a random classifier scaled so that logits on that clip have
    standard deviation 3: the magnitude of a trained model's."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, **kwargs)
    model.input_config = dataclasses.replace(model.input_config, crop_size=64, scale_size=72)
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for bn in bns:
        bn.momentum = 1.0
    frames = torch.from_numpy(make_frames(2 * model.num_segments, 72, 96, seed=11))
    clips = torch.stack([clip_input(model, f) for f in frames.split(model.num_segments)])
    model.train()
    with torch.no_grad():
        model(clips)
        for bn in bns:
            bn.momentum = 0.1
        model.eval()
        torch.nn.init.normal_(model.fc.weight)
        model.fc.weight.mul_(3.0 / model.forward_head(model.forward_features(clips)).std())
    return model


def clip_input(model: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (3, T, crop, crop) by hand: the test pipeline's 1x1 view."""
    ic = model.input_config
    return to_float(CenterCrop(ic.crop_size)(ResizeShorterSide(ic.scale_size)(frames)), ic)


def reference_logits(model: torch.nn.Module, frames: torch.Tensor, windows) -> torch.Tensor:
    """One independent ``model(clip)`` per window, in the model's dtype."""
    dtype = model.fc.weight.dtype
    with torch.no_grad():
        return torch.cat([model(clip_input(model, frames[list(w)]).unsqueeze(0).to(dtype).contiguous()) for w in windows])


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert float(want.abs().max()) > 0.5, "logits too small to test anything"
    diff = float((got.double() - want.double()).abs().max())
    assert diff <= TOL, f"max |cache - model(clip)| = {diff:.3g} (logits up to {float(want.abs().max()):.3g})"


# ------------------------------------------------------------------------------ library API
@pytest.mark.parametrize("name", FRAME_MODELS)
def test_cached_windows_equal_model_forward(name):
    """Overlapping windows (T=4, sharing 2 frames, scored one after the other) through
    FrameFeatureCache equal model(clip); a per-frame backbone runs each distinct frame exactly
    once, any other the whole model once per window."""
    model = small_model(name, num_segments=4)
    if shares_frames(model):
        model = model.double()
    frames = torch.from_numpy(make_frames(6, 72, 96, seed=3))
    cache = FrameFeatureCache(model, batch_size=3)
    cache.add(list(range(6)), frames)
    windows = [(0, 1, 2, 3), (2, 3, 4, 5)]
    got = torch.cat([cache.logits(windows[:1]), cache.logits(windows[1:])])
    assert_close(got, reference_logits(model, frames, windows))
    if cache.shared:
        assert cache.backbone_frames / 6 == 1.0
    else:
        assert cache.backbone_frames == 4 * len(windows)
    assert cache.shared == ("tsm" not in name and "tea" not in name)


# ------------------------------------------------------------------------------ through a file
@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """6 s of content-distinct frames, 96x128 at 16 fps (a GOP of 32: frames after seeks too)."""
    path = tmp_path_factory.mktemp("tl") / "walk.mp4"
    return str(write_video(path, make_frames(6 * FPS, 96, 128, seed=5), fps=FPS, gop=32))


def _count_decodes(monkeypatch) -> list:
    import tcpnet.data.readers.pyav as pyav

    calls, original = [], pyav.iter_frames

    def counting(path, wanted=None, **kw):
        calls.append(list(wanted))
        return original(path, wanted, **kw)

    monkeypatch.setattr(pyav, "iter_frames", counting)
    return calls


@pytest.mark.parametrize("name", ["tcp_tiny", "tsn_tiny"])
def test_timeline_equals_independent_forwards(name, video, monkeypatch):
    """Each window's logits equal model(clip) on load_clip(path, window.frames); the file is decoded
    once, in order, and each decoded frame goes through the backbone once."""
    model = small_model(name)
    calls = _count_decodes(monkeypatch)
    tl = timeline_video(model, video, TimelineOptions(window=2.0, stride=0.5, batch_windows=3))
    assert tl.error is None and len(tl.windows) == 9 and tl.stride == 0.5
    assert len(calls) == 1 and calls[0] == sorted(set(calls[0]))
    want = torch.cat([reference_logits(model, load_clip(video, w.frames), [range(8)]) for w in tl.windows])
    assert_close(tl.logits, want)
    assert tl.passes_per_frame == 1.0 and tl.distinct_frames == len(calls[0])
    assert [w.frames for w in tl.windows] == [w.frames for w in WindowGrid(2.0, 0.5, 8).file_windows(96, FPS)]


def test_video_backbone_falls_back_in_the_cache():
    """A 3-D backbone (X3D-S at T=4, crop 64) is not shared: each window is one model(clip)."""
    model = small_model("tcp_x3d_s", num_segments=4)
    frames = torch.from_numpy(make_frames(6, 72, 96, seed=4))
    cache = FrameFeatureCache(model)
    cache.add(list(range(6)), frames)
    windows = [(0, 1, 2, 3), (2, 3, 4, 5)]
    got = torch.cat([cache.logits(windows[:1]), cache.logits(windows[1:])])
    assert not cache.shared and cache.backbone_frames == 8 and "runs the whole model" in cache.describe()
    assert_close(got, reference_logits(model, frames, windows))
    assert "dense" not in cache.describe()  # TSN-sampled: nothing to say about the window length
    model.input_config = dataclasses.replace(model.input_config, sampler="dense", frame_interval=6)
    assert "dense clips of 4 frames 6 apart (24 frames, 0.80 s at 30 fps" in FrameFeatureCache(model).describe()


def test_fallback_model_is_correct_and_said_once(video, tmp_path, caplog):
    """A model with temporal modules (the tiny TCP network with TSM's temporal shift) runs one
    forward per window (T backbone frames each), with the logits of model(clip); how windows are
    computed and the stride rounding are each said once per run."""
    model = small_model("tcp_tiny", temporal_shift="blockres")
    caplog.set_level(logging.INFO, logger="tcpnet.apps.timeline")
    second = tmp_path / "second.mp4"
    write_video(second, make_frames(3 * FPS, 96, 128, seed=6), fps=FPS)
    tls = list(timeline_videos(model, [video, str(second)], TimelineOptions(window=2.0, stride=0.6)))
    assert [t.error for t in tls] == [None, None]
    tl = tls[0]
    assert tl.stride == 0.5 and tl.backbone_frames == 8 * len(tl.windows)
    want = torch.cat([reference_logits(model, load_clip(video, w.frames), [range(8)]) for w in tl.windows])
    assert_close(tl.logits, want)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("runs the whole model" in m for m in lines) == 1
    assert sum("rounded to 0.5s" in m for m in lines) == 1


def test_memory_stays_bounded(tmp_path):
    """A 20 s video: the cache never holds more than a batch of windows' frames."""
    path = write_video(tmp_path / "long.mp4", make_frames(20 * 8, 32, 48, seed=7), fps=8, gop=64)
    model = small_model("tsn_tiny", num_segments=4)
    grid = WindowGrid(2.0, 0.5, 4)
    windows = grid.file_windows(160, 8)
    cache = FrameFeatureCache(model, batch_size=4)
    held = []
    logits = score_windows(cache, str(path), windows, batch_windows=4, on_windows=lambda n: held.append(len(cache)))
    assert logits.shape == (len(windows), 5) and len(windows) == 37
    bound = 4 * grid.step + 4 + cache.batch_size  # a batch of windows, one window, one batch of new frames
    assert max(held) <= bound and cache.backbone_frames == 40


# ------------------------------------------------------------------------------ a cut between two classes
def _colour_clip(colour, seconds: float, seed: int) -> np.ndarray:
    """A disc of ``colour`` moving over grey noise, 64x64."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FPS)
    yy, xx = np.mgrid[0:64, 0:64]
    frames = rng.integers(90, 140, size=(n, 64, 64, 3)).astype(np.uint8)
    for t in range(n):
        cx, cy = 12 + 40 * t / n, 32 + 10 * np.sin(t / 5)
        frames[t][(xx - cx) ** 2 + (yy - cy) ** 2 < 14 ** 2] = colour
    return frames


@pytest.mark.parametrize("name", ["tsn_tiny", "tcp_tiny"])
def test_top_class_switches_at_the_cut(name, tmp_path):
    """Red for 5 s, then blue for 5 s. The classifier is set to the two classes' mean features
    (a prototype classifier on the real network's features); the top class switches within one
    window of the cut and the segments split there."""
    red, blue = _colour_clip((220, 30, 30), 5, 1), _colour_clip((30, 40, 220), 5, 2)
    path = str(write_video(tmp_path / "cut.mp4", np.concatenate([red, blue]), fps=FPS))
    model = small_model(name, num_classes=2)
    with torch.no_grad():
        feats = [model.forward_features(torch.stack([clip_input(model, torch.from_numpy(c[i:i + 8]))
                                                     for i in (0, 30, 60)])).mean(0) for c in (red, blue)]
        d = feats[0] - feats[1]
        model.fc.weight.copy_(torch.stack([d, -d]) * 10 / d.norm())
        mid = (feats[0] + feats[1]) / 2
        model.fc.bias.copy_(-model.fc.weight @ mid)
    model.class_names = ["red", "blue"]
    tl = timeline_video(model, path, TimelineOptions(window=2.0, stride=0.5))
    assert tl.error is None
    top = tl.probs.argmax(1).tolist()
    switch = top.index(1)
    assert top == [0] * switch + [1] * (len(top) - switch), top
    centre = (tl.windows[switch].start + tl.windows[switch].end) / 2
    assert abs(centre - 5.0) <= tl.window / 2, (centre, top)
    segs = tl.segments()
    assert [s.name for s in segs] == ["red", "blue"] and abs(segs[0].end - 5.0) <= tl.window / 2
    assert segs[0].end == segs[1].start and segs[0].start == 0.0 and segs[1].end == tl.windows[-1].end


# ------------------------------------------------------------------------------ smoothing, segments
def test_smoothing_is_a_centred_moving_average():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s3 = smooth_probabilities(p, 3)
    torch.testing.assert_close(s3[:, 0], torch.tensor([0.5, 2 / 3, 2 / 3, 2 / 3, 0.5]))
    assert torch.allclose(s3.sum(1), torch.ones(5))
    s2 = smooth_probabilities(p, 2)  # even N: the window and the next
    torch.testing.assert_close(s2[:, 0], torch.tensor([0.5, 0.5, 1.0, 0.5, 0.0]))
    assert torch.equal(smooth_probabilities(p, 1), p)
    torch.testing.assert_close(smooth_probabilities(p, 99), p.mean(0).expand(5, 2))
    with pytest.raises(ValueError):
        smooth_probabilities(p, 0)


def test_segments_of_a_known_sequence():
    """Windows of 2 s every 0.5 s with top classes a a b b b a: three segments, split half-way
    between the centres of the last window of one and the first of the next."""
    windows = [Window(i, 0.5 * i, 0.5 * i + 2, ()) for i in range(6)]
    p = torch.tensor([[.9, .1], [.7, .3], [.2, .8], [.4, .6], [.1, .9], [.6, .4]])
    segs = merge_segments(windows, p, ["a", "b"])
    assert [(s.name, s.start, s.end, s.first_window, s.last_window) for s in segs] == [
        ("a", 0.0, 1.75, 0, 1), ("b", 1.75, 3.25, 2, 4), ("a", 3.25, 4.5, 5, 5)]
    assert [round(s.prob, 6) for s in segs] == [0.8, round((.8 + .6 + .9) / 3, 6), 0.6]
    assert merge_segments([], p[:0], ["a", "b"]) == []


def test_multi_label_uses_sigmoid():
    logits = torch.tensor([[2.0, 2.0, -1.0]])
    torch.testing.assert_close(window_probabilities(logits, True), logits.sigmoid())
    torch.testing.assert_close(window_probabilities(logits, False), logits.softmax(-1))


# ------------------------------------------------------------------------------ the command
def test_command_files_json_lines_and_bad_file(video, tmp_path, capsys):
    """Files for every good video (CSV, JSON, PNG, HTML, segments), one JSON object per window
    and segment on stdout, a bad file named in one error line, exit 1."""
    from PIL import Image

    from tcpnet.cli import main
    from tcpnet.viz import decode_image

    model = small_model("tcp_tiny", num_classes=3)
    ckpt = save_model(model, tmp_path / "m.pt", class_names=["x", "y", "z"])
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    out = tmp_path / "out"
    rc = main(["timeline", video, str(bad), "--checkpoint", str(ckpt), "--out", str(out), "--json", "--topk", "2",
               "--segments", "--smooth", "3", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("tcpnet: error:")]
    assert len(errors) == 1 and "broken.mp4" in errors[0]
    lines = [json.loads(line) for line in captured.out.splitlines()]
    windows = [r for r in lines if r["kind"] == "window"]
    assert len(windows) == 9 and all(len(r["topk"]) == 2 and r["video"] == video for r in windows)
    assert [r["index"] for r in windows] == list(range(9)) and windows[1]["start"] == 0.5
    assert all(r["topk"][0]["name"] in ("x", "y", "z") for r in windows)
    doc = json.loads((out / "walk.json").read_text())
    assert doc["num_windows"] == 9 and doc["smooth"] == 3 and doc["backbone_passes_per_frame"] == 1.0
    assert [w["topk"] for w in doc["windows"]] == [r["topk"] for r in windows]
    rows = list(csv.DictReader(open(out / "walk.csv")))
    assert len(rows) == 9 and float(rows[2]["start"]) == 1.0 and rows[0]["name_1"] == windows[0]["topk"][0]["name"]
    segs = list(csv.DictReader(open(out / "walk.segments.csv")))
    assert segs and segs == [dict(r, **{}) for r in segs] and json.loads((out / "walk.segments.json").read_text())
    assert [s for s in lines if s["kind"] == "segment"]
    Image.open(out / "walk.png").verify()
    html = (out / "walk.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html and "http" not in html
    src = html.split('src="', 1)[1].split('"', 1)[0]
    assert decode_image(src).size == Image.open(out / "walk.png").size
    assert not (out / "broken.json").exists()


def test_command_refuses_bad_settings_in_one_line(video, tmp_path, capsys):
    from tcpnet.cli import main

    ckpt = save_model(small_model("tsn_tiny", num_classes=2), tmp_path / "m.pt")
    for flag, value, words in (("--window", "0", "--window must be a positive number"),
                               ("--smooth", "0", "--smooth must be a whole number >= 1")):
        assert main(["timeline", video, "--checkpoint", str(ckpt), flag, value, "--out", str(tmp_path)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("tcpnet: error: ") and words in err[-1], err


def test_short_video_and_labels_file(tmp_path, capsys):
    """A video shorter than one window gets one window over all of it (the test sampler's
    frames); --labels names the classes."""
    from tcpnet.cli import main

    path = write_video(tmp_path / "short.mp4", make_frames(12, 48, 64, seed=8), fps=FPS)
    ckpt = save_model(small_model("tsn_tiny", num_classes=2), tmp_path / "m.pt")
    (tmp_path / "names.txt").write_text("left\nright\n")
    assert main(["timeline", str(path), "--checkpoint", str(ckpt), "--labels", str(tmp_path / "names.txt"),
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (line["index"], line["start"], line["end"]) == (0, 0.0, 0.75)
    assert {t["name"] for t in line["topk"]} == {"left", "right"}
    doc = json.loads((tmp_path / "out" / "short.json").read_text())
    assert doc["windows"][0]["frames"] == [int(1.5 / 2 + 1.5 * x) for x in range(8)]
