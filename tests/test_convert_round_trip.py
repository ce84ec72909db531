"""`tcpnet convert` of our own file, .pt -> .safetensors -> .pt: test, predict and explain on each
file give identical numbers and class names (the converted files used to lose the class names and
the trained input config, crop 48 becoming the factory's 112, and so predicted differently).

Tolerance: exact equality; every file holds the same float32 tensors and rebuilds the same model."""
from __future__ import annotations

import pytest
import torch

from tcpnet.apps.explain import explain_video
from tcpnet.apps.predict import predict_videos
from tcpnet.apps.test import run_test
from tcpnet.checkpoints import build_model_from_checkpoint, save_model
from tcpnet.cli import main
from tcpnet.config import load_config
from tcpnet.models import build_model
from tcpnet.tools.synthetic import make_synthetic_dataset

NAMES = ["move_right", "move_left", "grow", "shrink"]
CONFIG = """\
model: {name: tcp_tiny, num_segments: 4}
data: {root: data, val_list: data/val.txt, num_workers: 0}
test: {batch_size: 4, views: 1x2}
device: cpu
"""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A trained-looking tcp_tiny (random classifier, crop 48) saved with class names, then
    converted by the command to .safetensors and back to .pt."""
    ws = tmp_path_factory.mktemp("convert")
    make_synthetic_dataset(ws / "data", num_classes=4, train_per_class=1, val_per_class=1, num_frames=12, size=56,
                           progress=False)
    (ws / "tiny.yaml").write_text(CONFIG)
    torch.manual_seed(0)
    model = build_model("tcp_tiny", num_classes=4, num_segments=4, dim=16, mid_channels=32)
    model.input_config = type(model.input_config)(crop_size=48, scale_size=56, num_segments=4)
    torch.nn.init.normal_(model.fc.weight, std=0.5)
    save_model(model, ws / "a.pt", class_names=NAMES)
    assert main(["convert", str(ws / "a.pt"), str(ws / "b.safetensors")]) == 0
    assert main(["convert", str(ws / "b.safetensors"), str(ws / "c.pt")]) == 0
    return ws


def test_test_predict_and_explain_agree_on_every_format(converted):
    ws = converted
    videos = sorted(str(p) for p in (ws / "data/videos/val").rglob("*.mp4"))
    cfg = load_config(ws / "tiny.yaml", [f"data.root={ws / 'data'}", f"data.val_list={ws / 'data/val.txt'}",
                                         f"output_dir={ws / 'run'}"])
    results = []
    for name in ("a.pt", "b.safetensors", "c.pt"):
        model = build_model_from_checkpoint(ws / name)
        assert model.class_names == NAMES and model.input_config.crop_size == 48
        preds = predict_videos(model, videos, views="1x2", topk=4)
        expl = explain_video(model, videos[0])
        tested = run_test(cfg, str(ws / name), output_dir=ws / f"test_{name}", progress=False)
        results.append((preds, expl, tested))
    (p0, e0, t0), others = results[0], results[1:]
    assert all(p.error is None for p in p0) and t0.class_names == NAMES
    assert {t["name"] for t in p0[0].topk} == set(NAMES)
    for preds, expl, tested in others:
        assert [p.to_dict() for p in preds] == [p.to_dict() for p in p0]
        assert torch.equal(expl.logits, e0.logits) and torch.equal(expl.gradcam, e0.gradcam)
        assert torch.equal(expl.tsa, e0.tsa) and torch.equal(expl.importance, e0.importance)
        assert expl.topk(4) == e0.topk(4)
        assert torch.equal(tested.view_logits[0], t0.view_logits[0]) and tested.class_names == NAMES
        assert {k: v for k, v in tested.metrics.items() if k != "checkpoints"} == \
            {k: v for k, v in t0.metrics.items() if k != "checkpoints"}
