"""predict_videos: the test pipeline per video (sampling, resize, crops, normalisation, fusion)
checked against a hand-built pipeline, top-k ordering, labels, and per-video errors."""
import numpy as np
import pytest
import torch

from tcpnet.data import load_clip
from tcpnet.data.transforms import CenterCrop, ResizeShorterSide, ThreeCrop, to_float
from tcpnet.apps.predict import Prediction, predict_videos, read_labels
from tcpnet.models import build_model
from videos import make_frames, write_video

T = 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("tcp_tiny", num_classes=5, num_segments=T, dim=16, mid_channels=32).eval()
    torch.nn.init.normal_(m.fc.weight, std=0.5)  # logits of order 1, so the probabilities differ
    m.class_names = ["a", "b", "c", "d", "e"]
    return m


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two landscape videos (20 and 13 frames, 48x80) with distinct content."""
    d = tmp_path_factory.mktemp("pred")
    return [write_video(d / "one.mp4", make_frames(20, 48, 80, seed=1)),
            write_video(d / "two.mp4", make_frames(13, 48, 80, seed=2))]


def centres(num_frames: int, num_segments: int, clip: int = 0, num_clips: int = 1) -> list:
    """TSN test indices: segment centres (1 clip); clip k of N starts at tick*k/N (k order 1..N-1, 0)."""
    tick = num_frames / num_segments
    if num_clips == 1:
        return [int(tick / 2 + tick * x) for x in range(num_segments)]
    k = (list(range(1, num_clips)) + [0])[clip]
    return [int(tick / num_clips * k + tick * x) for x in range(num_segments)]


def test_1x1_matches_hand_pipeline(model, clips):
    """1x1 = segment centres, shorter side -> scale_size, centre crop_size, softmax."""
    ic = model.input_config
    preds = predict_videos(model, [str(c) for c in clips], topk=5)
    for path, pred, n in zip(clips, preds, (20, 13)):
        frames = load_clip(path, centres(n, T))
        x = CenterCrop(ic.crop_size)(ResizeShorterSide(ic.scale_size)(frames))
        assert x.shape == (T, ic.crop_size, ic.crop_size, 3)
        with torch.no_grad():
            probs = model(to_float(x, ic).unsqueeze(0))[0].softmax(-1)
        assert pred.error is None and pred.video == str(path)
        got = {t["label"]: t["prob"] for t in pred.topk}
        assert len(got) == 5
        for c in range(5):  # same float32 computation: only op order may differ
            assert got[c] == pytest.approx(probs[c].item(), abs=1e-6)
        ranked = [t["prob"] for t in pred.topk]
        assert ranked == sorted(ranked, reverse=True) and sum(ranked) == pytest.approx(1.0, abs=1e-5)
        assert [t["name"] for t in pred.topk] == [model.class_names[t["label"]] for t in pred.topk]


def test_3x2_is_mean_of_view_softmaxes(model, clips):
    """3 full-resolution crops (scale_size) x 2 clips; mean-prob fusion (probabilities sum to 1)."""
    ic = model.input_config
    pred = predict_videos(model, [str(clips[0])], views="3x2", topk=3)[0]
    views = []
    for crop in range(3):
        for clip in range(2):
            frames = load_clip(clips[0], centres(20, T, clip, 2))
            x = ThreeCrop(ic.scale_size)(ResizeShorterSide(ic.scale_size)(frames))[crop]
            views.append(to_float(x, ic))
    with torch.no_grad():
        probs = model(torch.stack(views)).softmax(-1).mean(0)
    top = torch.sort(probs, descending=True, stable=True)
    assert [t["label"] for t in pred.topk] == top.indices[:3].tolist()
    np.testing.assert_allclose([t["prob"] for t in pred.topk], top.values[:3].numpy(), atol=1e-6)
    assert sum(t["prob"] for t in pred.topk) < 1.0


def test_max_prob_and_mean_logit_fusions_report_probabilities(model, clips):
    for fusion in ("max-prob", "mean-logit"):
        pred = predict_videos(model, [str(clips[1])], views="1x2", topk=5, fusion=fusion)[0]
        assert sum(t["prob"] for t in pred.topk) == pytest.approx(1.0, abs=1e-5)


def test_bad_videos_are_reported_not_raised(model, clips, tmp_path):
    text = tmp_path / "readme.mp4"
    text.write_text("hello")
    missing = tmp_path / "missing.mp4"
    preds = predict_videos(model, [str(text), str(clips[0]), str(missing)], topk=2)
    assert [p.video for p in preds] == [str(text), str(clips[0]), str(missing)]
    assert preds[0].error and "readme.mp4" in preds[0].error and not preds[0].topk
    assert preds[1].error is None and len(preds[1].topk) == 2
    assert preds[2].error and "missing.mp4" in preds[2].error
    assert isinstance(preds[1], Prediction) and preds[1].to_dict()["topk"] == preds[1].topk


def test_topk_clipped_and_labels(model, clips, tmp_path):
    pred = predict_videos(model, [str(clips[0])], topk=50, class_names=list("VWXYZ"))[0]
    assert len(pred.topk) == 5 and {t["name"] for t in pred.topk} == set("VWXYZ")
    f = tmp_path / "labels.txt"
    f.write_text("x\ny\n")
    with pytest.raises(ValueError, match="2 class names but the model has 5"):
        read_labels(str(f), 5)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_labels(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="topk"):
        predict_videos(model, [str(clips[0])], topk=0)


def test_non_finite_logits_are_an_error_naming_the_video(clips):
    """A model whose classifier bias is NaN used to print 'nan' probabilities with rc 0."""
    torch.manual_seed(0)
    broken = build_model("tcp_tiny", num_classes=5, num_segments=T, dim=16, mid_channels=32).eval()
    with torch.no_grad():
        broken.fc.bias[2] = float("nan")
    preds = predict_videos(broken, [str(c) for c in clips], topk=3)
    for path, pred in zip(clips, preds):
        assert pred.topk == [] and pred.error is not None
        assert pred.error.startswith(f"the model output NaN or infinite logits for 1 of 1 video(s): {path};")


def test_predict_and_explain_commands_reuse_freed_memory(model, clips, tmp_path, monkeypatch, capsys):
    """One forward per video: with glibc's defaults each forward page-faults its freed activations
    back in (benchmarks/isqrt_warmup.py: ~6k faults per tcp_tsn_r50 forward at 8x112^2, 0 when
    retained), so both commands keep freed memory, as test and train do."""
    import tcpnet.utils.malloc as malloc
    from tcpnet.checkpoints import save_model
    from tcpnet.cli import main

    calls = []
    monkeypatch.setattr(malloc, "retain_freed_memory", lambda: calls.append(1) or True)
    ckpt = save_model(model, tmp_path / "m.pt")
    assert main(["predict", str(clips[0]), "--checkpoint", str(ckpt), "--device", "cpu"]) == 0
    assert calls == [1] and capsys.readouterr().out.startswith(str(clips[0]))
    assert main(["explain", str(clips[0]), "--checkpoint", str(ckpt), "--out", str(tmp_path / "ex"),
                 "--device", "cpu"]) == 0
    assert calls == [1, 1] and (tmp_path / "ex/one.png").is_file()
