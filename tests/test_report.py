"""tcpnet.apps.report: report.html of a test run (single- and multi-label) parses, shows the
numbers of metrics.json, sorts classes worst first, and every embedded image decodes; the
selection helpers against hand-made cases; `tcpnet test --report`."""
from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from tcpnet.checkpoints import save_model
from tcpnet.config import load_config
from tcpnet.engine.metrics import average_precision
from tcpnet.apps.report import confused_pairs, video_probabilities, worst_videos, write_test_report
from tcpnet.apps.test import run_test
from tcpnet.models import build_model
from tcpnet.tools.synthetic import make_synthetic_dataset
from tcpnet.viz import decode_image

NAMES = ["move_right", "move_left", "grow", "shrink"]
CONFIG = """\
model: {name: tcp_tiny, num_segments: 4}
data: {root: data, train_list: data/train.txt, val_list: data/val.txt, class_names: data/classes.txt,
       num_workers: 0, crop_size: 48, scale_size: 48}
test: {batch_size: 4, views: 1x1}
output_dir: run
device: cpu
"""


class Page(HTMLParser):
    """Headings, table rows (cell texts), images (src, alt) and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tags, self.h2, self.h3, self.images, self.rows = [], [], [], [], []
        self._text = None
        self._row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in ("h2", "h3", "td", "th"):
            self._text = []
        if tag == "tr":
            self._row = []
        if tag == "img":
            self.images.append((a["src"], a.get("alt", "")))

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self._text is not None:
            getattr(self, tag).append("".join(self._text).strip())
            self._text = None
        if tag in ("td", "th") and self._text is not None:
            self._row.append("".join(self._text).strip())
            self._text = None
        if tag == "tr":
            self.rows.append(self._row)

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def parse(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text  # offline, no JS
    assert 'name="viewport"' in text and "@media (max-width" in text  # phone layout
    p = Page()
    p.feed(text)
    p.close()
    for src, alt in p.images:
        assert src.startswith("data:image/"), alt
        img = decode_image(src)
        assert img.width > 10 and img.height > 10, alt
    return p


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """4 classes x 2 val videos (12 frames, 48 px) and an untrained tcp_tiny with a random
    classifier saved as a model file."""
    ws = tmp_path_factory.mktemp("report")
    make_synthetic_dataset(ws / "data", num_classes=4, train_per_class=1, val_per_class=2, num_frames=12, size=48,
                           progress=False)
    (ws / "tiny.yaml").write_text(CONFIG)
    torch.manual_seed(0)
    model = build_model("tcp_tiny", num_classes=4, num_segments=4, dim=16, mid_channels=32)
    model.input_config = type(model.input_config)(crop_size=48, scale_size=48, num_segments=4)
    torch.nn.init.normal_(model.fc.weight, std=0.5)
    save_model(model, ws / "m.pt", class_names=NAMES)
    return ws


def _cfg(ws: Path, *overrides: str):
    ov = [f"data.root={ws / 'data'}", f"data.train_list={ws / 'data/train.txt'}",
          f"data.val_list={ws / 'data/val.txt'}", f"data.class_names={ws / 'data/classes.txt'}",
          f"output_dir={ws / 'run'}", *overrides]
    return load_config(ws / "tiny.yaml", ov)


def test_single_label_report(workspace):
    cfg = _cfg(workspace)
    result = run_test(cfg, str(workspace / "m.pt"), output_dir=workspace / "t1", progress=False)
    path = write_test_report(result, cfg, worst=3)
    assert path == workspace / "t1/report.html"
    page = parse(path)
    assert page.h2 == ["Metrics", "Confusion matrix", "Per-class accuracy", "Most-confused pairs",
                       "Worst-predicted videos"]
    m = result.metrics
    rows = {r[0]: r[1] for r in page.rows if len(r) == 2}
    assert rows["top-1 accuracy (%)"] == f"{m['top1']:.2f}" and rows["videos"] == "8"
    assert rows["mean class accuracy (%)"] == f"{m['mean_class_acc']:.2f}"

    per_class = [r for r in page.rows if len(r) == 5 and r[0] in NAMES]
    accs = [float(r[1]) for r in per_class]
    assert accs == sorted(accs) and len(per_class) == 4  # worst class first
    assert {r[0]: float(r[1]) for r in per_class} == pytest.approx(m["per_class_accuracy"], abs=0.05)

    cm = np.zeros((4, 4), dtype=int)
    for t, s in zip(result.targets.tolist(), result.scores.argmax(1).tolist()):
        cm[t, s] += 1
    pairs = [r for r in page.rows if len(r) == 4 and r[0] in NAMES]
    assert [(r[0], r[1], int(r[2])) for r in pairs] == [(NAMES[i], NAMES[j], n) for i, j, n in confused_pairs(cm)]

    # worst videos: lowest probability of the true class, each with a thumbnail strip and a sheet
    probs = video_probabilities(result.scores, m["fusion"], False)
    expected = worst_videos(probs, result.targets, 3)
    assert page.h3 == [f"{k}. {result.paths[i]}" for k, i in enumerate(expected, 1)]
    kinds = [src.split(";")[0] for src, _ in page.images]
    assert kinds == ["data:image/png"] + ["data:image/jpeg", "data:image/png"] * 3
    thumb = decode_image(page.images[1][0])
    assert thumb.height == 96 and thumb.width == 4 * 96 + 3 * 2  # 4 sampled frames, 2 px gaps


def test_multi_label_report_shows_per_class_ap(workspace):
    rows = ["id,actions",
            "videos/val/grow/00000,c2 0.0 1.0;c0 0.2 0.5",
            "videos/val/shrink/00000,c3 0.0 1.0",
            "videos/val/move_left/00000,c1 0.0 1.0;c3 0.1 0.4",
            "videos/val/move_right/00001,"]  # no action: an all-zero target, never among the worst
    (workspace / "charades.csv").write_text("\n".join(rows) + "\n")
    cfg = _cfg(workspace, f"data.test_list={workspace / 'charades.csv'}", "data.multi_label=true")
    result = run_test(cfg, str(workspace / "m.pt"), output_dir=workspace / "ml", progress=False)
    page = parse(write_test_report(result, cfg, worst=5))
    assert page.h2 == ["Metrics", "Per-class average precision", "Per-class AP table", "Worst-predicted videos"]
    assert {r[0]: r[1] for r in page.rows if len(r) == 2}["mAP (%)"] == f"{result.metrics['mAP']:.2f}"
    ap_rows = [r for r in page.rows if len(r) == 4 and r[0] in NAMES]
    for name, ap, _, positives in ap_rows:
        c = NAMES.index(name)
        assert int(positives) == int(result.targets[:, c].sum())
        assert float(ap) == pytest.approx(100 * average_precision(result.scores[:, c], result.targets[:, c]), abs=0.05)
    assert len(page.h3) == 3 and not any("move_right/00001" in h for h in page.h3)
    assert len(page.images) == 1 + 2 * 3


def test_selection_helpers():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]])
    assert worst_videos(probs, torch.tensor([0, 0, 2, 1]), 3) == [1, 3, 2]
    multi = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]])
    # video 1: 1 of its 2 labels in its top-2; video 0: 1/1; video 3: 1/1 (lower mean prob first)
    assert worst_videos(probs, multi, 4) == [1, 3, 0]
    cm = np.array([[5, 2, 0], [4, 1, 4], [0, 1, 3]])
    assert confused_pairs(cm, 3) == [(1, 0, 4), (1, 2, 4), (0, 1, 2)]
    scores = torch.tensor([[0.5, 0.5, 1.0]])
    assert torch.allclose(video_probabilities(scores, "max-prob", False), torch.tensor([[0.25, 0.25, 0.5]]))
    assert torch.allclose(video_probabilities(scores, "mean-logit", False), scores.softmax(-1))
    assert torch.equal(video_probabilities(scores, "auto", True), scores)  # max-sigmoid: already probabilities


@pytest.mark.slow
def test_test_command_writes_the_report(workspace):
    cfg_args = [f"data.root={workspace / 'data'}", f"data.val_list={workspace / 'data/val.txt'}",
                f"data.train_list={workspace / 'data/train.txt'}", f"data.class_names={workspace / 'data/classes.txt'}"]
    proc = subprocess.run([sys.executable, "-m", "tcpnet", "test", "tiny.yaml", "--checkpoint", "m.pt", "--out", "cli",
                           "--report", *cfg_args], cwd=workspace, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "report: cli/report.html"
    page = parse(workspace / "cli/report.html")
    assert len(page.h3) == 8 and len(page.images) == 1 + 2 * 8


def test_nan_model_is_an_error_in_tcpnet_test(workspace, capsys):
    """`tcpnet test` of a model whose logits are NaN printed 'top-1 100.00' and exited 0: a NaN
    outranks no class, so it counted as a hit. Now one error line names the checkpoint and the
    videos, and no result file is written."""
    from tcpnet.cli import main

    model = build_model("tcp_tiny", num_classes=4, num_segments=4, dim=16, mid_channels=32)
    model.input_config = type(model.input_config)(crop_size=48, scale_size=48, num_segments=4)
    with torch.no_grad():
        model.fc.bias[1] = float("nan")
    save_model(model, workspace / "nan.pt", class_names=NAMES)
    args = [f"data.root={workspace / 'data'}", f"data.val_list={workspace / 'data/val.txt'}",
            f"data.train_list={workspace / 'data/train.txt'}", f"data.class_names={workspace / 'data/classes.txt'}"]
    rc = main(["test", str(workspace / "tiny.yaml"), "--checkpoint", str(workspace / "nan.pt"),
               "--out", str(workspace / "nan_test"), *args])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1 and not (workspace / "nan_test/metrics.json").exists()
    errors = [line for line in err if line.startswith("tcpnet: error:")]
    assert len(errors) == 1
    first = (workspace / "data/val.txt").read_text().split()[0]
    assert errors[0].startswith(f"tcpnet: error: {workspace / 'nan.pt'}: the model output NaN or infinite "
                                f"logits for 8 of 8 video(s): {first}, ")


def test_multi_label_report_lists_only_classes_with_positives_by_their_ids(workspace):
    """Charades-style list without class names in which class 1 has no positive video: the AP
    table lists the 3 other classes as c000/c002/c003 (not 0/2/3) and says 1 class was left out."""
    model = build_model("tcp_tiny", num_classes=4, num_segments=4, dim=16, mid_channels=32)
    model.input_config = type(model.input_config)(crop_size=48, scale_size=48, num_segments=4)
    save_model(model, workspace / "unnamed.pt")
    rows = ["id,actions",
            "videos/val/grow/00000,c2 0.0 1.0;c0 0.2 0.5",
            "videos/val/shrink/00000,c3 0.0 1.0",
            "videos/val/move_left/00000,c0 0.0 1.0;c3 0.1 0.4"]
    (workspace / "no_c1.csv").write_text("\n".join(rows) + "\n")
    cfg = _cfg(workspace, f"data.test_list={workspace / 'no_c1.csv'}", "data.multi_label=true", "data.class_names=null")
    result = run_test(cfg, str(workspace / "unnamed.pt"), output_dir=workspace / "no_c1", progress=False)
    assert result.class_names is None
    path = write_test_report(result, cfg, worst=1, explain=False)
    page = parse(path)
    ap_rows = [r for r in page.rows if len(r) == 4 and r[0] != "class"]
    assert sorted(r[0] for r in ap_rows) == ["c000", "c002", "c003"]
    assert [int(r[3]) for r in sorted(ap_rows)] == [2, 1, 2]
    text = path.read_text(encoding="utf-8")
    assert "3 classes with a positive video; 1 without one left out (no AP)" in text
    truth = text.split("<p>true: ")[1].split(" ·")[0]  # the worst video's labels, by their ids too
    assert truth in ("c000, c002", "c003", "c000, c003")


def test_checkpoint_with_fewer_classes_than_the_data_says_what_to_do(workspace):
    """A 3-class checkpoint tested on the 4-class data: the error names data.class_names and the
    checkpoint, and says what to do with tcpnet's commands (no strict=False)."""
    model = build_model("tcp_tiny", num_classes=3, num_segments=4, dim=16, mid_channels=32)
    save_model(model, workspace / "three.pt")
    with pytest.raises(ValueError) as err:
        run_test(_cfg(workspace), str(workspace / "three.pt"), output_dir=workspace / "three", progress=False)
    ckpt = workspace / "three.pt"
    assert str(err.value) == (f"{workspace / 'data/classes.txt'} (data.class_names): 4 class names but {ckpt} is a "
                              f"3-class model; test it on data of its 3 classes, or train a 4-class model from it "
                              f"(tcpnet train CONFIG model.pretrained={ckpt}: every weight but the classifier is loaded)")


def test_one_confusion_matrix_renderer(workspace):
    """`tcpnet test`'s confusion_matrix.png is the report's figure (viz.confusion_summary), pixel for
    pixel: there is one renderer of a confusion matrix."""
    from tcpnet.engine.metrics import confusion_matrix
    from tcpnet.viz import confusion_summary

    result = run_test(_cfg(workspace), str(workspace / "m.pt"), output_dir=workspace / "cm", progress=False)
    cm = confusion_matrix(result.targets, result.scores.argmax(1), 4)
    written = np.asarray(decode_image((workspace / "cm/confusion_matrix.png").read_bytes()).convert("RGB"))
    np.testing.assert_array_equal(written, confusion_summary(cm, NAMES))
