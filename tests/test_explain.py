"""tcpnet.apps.explain: the explained forward is the model's, Grad-CAM / TSA / TCA / frame
importance against their definitions computed independently, files written and decodable, and the
`tcpnet explain` command. Tiny models at 32-48 px.

Tolerances: logits must equal ``model(x)`` to 1e-6 (the same float32 operations run; only the
autograd mode differs). Frame importance computed from the backbone maps (TSN shortcut) vs. by
running the modified clips: 1e-5 (float32 convolutions over different batch sizes may block the
sums differently, ~1e-7 relative on probabilities of order 1).
"""
from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

from tcpnet.apps.explain import (explain_clip, explain_frames, explain_video, feature_frames, neighbour_index,
                                   write_explanation)
from tcpnet.apps.predict import predict_videos
from tcpnet.models import build_model
from videos import make_frames, write_video

T, S = 4, 48


def live_attention(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random classifier (logits of order 1) and, for TCP, non-zero TSA BN and temporal conv, so
    that every attention path changes the output (the published init makes them identities)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=g) * 0.5)
        att = getattr(model.head, "TCP_att", None)
        if att is not None:
            att.TSA.norm.weight.copy_(torch.randn(att.TSA.norm.weight.shape, generator=g))
            att.conv_1d.weight.copy_(torch.randn(att.conv_1d.weight.shape, generator=g) * 0.05)
    return model.eval()


BUILDERS = {
    "tcp_tiny": lambda: build_model("tcp_tiny", num_classes=5, num_segments=T, dim=16, mid_channels=32),
    "tsn_tiny": lambda: build_model("tsn_tiny", num_classes=5, num_segments=T),
    "gcp_tiny": lambda: build_model("gcp_tiny", num_classes=5, num_segments=T, dim=16, mid_channels=32),
    "tcp_tiny_tsm": lambda: build_model("tcp_tiny", num_classes=5, num_segments=T, dim=16, mid_channels=32,
                                        temporal_shift="blockres"),
    "tcp_r2plus1d_r18": lambda: build_model("tcp_r2plus1d_r18", num_classes=5, num_segments=8, dim=16,
                                            mid_channels=32),
}


def make_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return live_attention(BUILDERS[name]())


def clips_for(model: torch.nn.Module, views: int, seed: int = 0) -> torch.Tensor:
    size = 32 if model.layout == "video" else S
    g = torch.Generator().manual_seed(seed)
    return torch.randn(views, 3, model.num_segments, size, size, generator=g)


# --------------------------------------------------------------------- forward and ranges
@pytest.mark.parametrize("name", list(BUILDERS))
def test_explained_forward_is_the_models_and_maps_are_in_range(name):
    model = make_model(name)
    views = 1 if model.layout == "video" else 2
    x = clips_for(model, views)
    with torch.no_grad():
        ref = model(x)
    model.train()  # explain runs in eval mode and restores the mode
    grad_mode = torch.is_grad_enabled()
    e = explain_clip(model, x)
    assert model.training and torch.is_grad_enabled() == grad_mode
    torch.testing.assert_close(e.logits, ref, rtol=0, atol=1e-6)
    t = model.num_segments
    assert e.probs.shape == (views, 5) and torch.allclose(e.probs.sum(1), torch.ones(views), atol=1e-6)
    assert torch.equal(e.target, ref.argmax(1))
    assert e.gradcam.dim() == 4 and e.gradcam.shape[:2] == (views, t)
    assert torch.isfinite(e.gradcam).all() and e.gradcam.min() >= 0 and e.gradcam.max() <= 1
    assert torch.allclose(e.gradcam.flatten(1).amax(1), torch.ones(views))  # scaled to each view's peak
    assert e.importance.shape == (views, t) and torch.isfinite(e.importance).all()
    assert e.importance.abs().max() <= 1
    assert e.frames.shape == (views, t, x.shape[3], x.shape[4], 3) and e.frames.dtype == np.uint8
    if name.startswith("tcp"):
        assert e.tsa.shape == e.gradcam.shape and torch.isfinite(e.tsa).all()
        assert e.tsa.min() >= 0 and e.tsa.max() <= 1
        assert (e.tsa_focus >= 1 - 1e-5).all()  # the peak weight is at least the uniform one
        assert e.tca.shape == (views, t) and ((e.tca > 0) & (e.tca < 1)).all()
    else:
        assert e.tsa is None and e.tca is None
    if model.layout == "video":  # R(2+1)D: 8 frames -> T' = 1 feature frame for all of them
        assert e.feature_frames == [0] * 8
    json.dumps(e.to_dict(maps=True))


def test_frame_mappings():
    assert feature_frames(16, 2) == [0] * 8 + [1] * 8
    assert feature_frames(8, 8) == list(range(8))
    assert feature_frames(8, 3) == [0, 0, 0, 1, 1, 1, 2, 2]
    assert neighbour_index(4).tolist() == [[1, 1, 2, 3], [0, 0, 2, 3], [0, 1, 1, 3], [0, 1, 2, 2]]


# ----------------------------------------------------------------- against the definitions
@pytest.mark.parametrize("name", ["tcp_tiny", "tcp_tiny_tsm", "tsn_tiny"])
def test_importance_is_the_drop_when_a_frame_is_replaced(name):
    """Shortcut (TSN backbones: head on re-indexed maps) and full path (TSM mixes frames) both
    equal running the model on each modified clip."""
    model = make_model(name)
    x = clips_for(model, 2, seed=3)
    e = explain_clip(model, x)
    with torch.no_grad():
        base = model(x).softmax(-1)
        for t in range(T):
            x2 = x.clone()
            x2[:, :, t] = x[:, :, 1 if t == 0 else t - 1]
            p = model(x2).softmax(-1)
            expected = base.gather(1, e.target[:, None]) - p.gather(1, e.target[:, None])
            torch.testing.assert_close(e.importance[:, t], expected[:, 0], rtol=0, atol=1e-5)


def test_gradcam_of_average_pooling_is_the_class_activation_map():
    """With GAP + linear classifier the logit gradient is w[class] / (T h w) everywhere, so
    Grad-CAM = ReLU(sum_c w[class, c] A_c), scaled to the clip's peak (Zhou et al.'s CAM)."""
    model = make_model("tsn_tiny")
    x = clips_for(model, 2, seed=1)
    e = explain_clip(model, x, target=3)
    with torch.no_grad():
        maps = model.backbone(model.frames(x))
        cam = torch.einsum("c,nchw->nhw", model.fc.weight[3], maps).relu().view(2, T, *maps.shape[2:])
        cam = cam / cam.flatten(1).amax(1).view(2, 1, 1, 1)
    torch.testing.assert_close(e.gradcam, cam, rtol=0, atol=1e-5)
    assert e.target.tolist() == [3, 3]


def test_tsa_and_tca_are_the_modules_attention():
    """TSA map = column mean of the softmax affinity the module applies; TCA = the factor its
    forward scales ``xa`` by (read by feeding xa = 1)."""
    model = make_model("tcp_tiny")
    x = clips_for(model, 2, seed=2)
    seen = []  # the TSA input of the explained forward (the first call; later ones are the importance pass)
    h = model.head.TCP_att.TSA.register_forward_hook(lambda m, a, o: seen.append(a[0].detach()) and None)
    try:
        e = explain_clip(model, x)
    finally:
        h.remove()
    z = seen[0]
    tsa, tca = model.head.TCP_att.TSA, model.head.TCP_att.TCA
    with torch.no_grad():
        aff = tsa.affinity(z, T)
        assert torch.allclose(aff.sum(-1), torch.ones(aff.shape[:2]), atol=1e-5)
        received = aff.mean(1).view(2, T, *z.shape[2:])
        expected = received / received.flatten(1).amax(1).view(2, 1, 1, 1)
        scale = tca(z, torch.ones_like(z), T)[:, :, 0, 0].mean(1).view(2, T)
    torch.testing.assert_close(e.tsa, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(e.tca, scale, rtol=0, atol=1e-6)


# -------------------------------------------------------------------- a trained model, files
def moving_squares(n: int, seed: int):
    """Class 0: a white square moves left -> right; class 1: right -> left (time reversal)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, T, S, S, generator=g) * 0.3
    for i in range(n):
        row = int(torch.randint(4, S - 14, (1,), generator=g))
        for t in range(T):
            col = 2 + 12 * (t if y[i] == 0 else T - 1 - t)
            x[i, :, t, row:row + 10, col:col + 10] = 1.0
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1), y  # (n, T, S, S, 3)


@pytest.fixture(scope="module")
def trained():
    """tcp_tiny trained for 40 Adam steps on moving squares (order-dependent; ~100% held out)."""
    torch.manual_seed(0)
    model = build_model("tcp_tiny", num_classes=2, num_segments=T, dim=16, mid_channels=32, dropout=0.0)
    model.input_config = type(model.input_config)(crop_size=S, scale_size=S, num_segments=T)
    model.class_names = ["left_to_right", "right_to_left"]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    from tcpnet.data.transforms import to_float

    for step in range(40):
        frames, y = moving_squares(8, step)
        loss = torch.nn.functional.cross_entropy(model(to_float(frames, model.input_config)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_trained_model_explanation_and_files(trained, tmp_path):
    frames, y = moving_squares(6, 1000)
    e = explain_frames(trained, frames)
    assert torch.equal(e.target, y)  # learned the order
    assert np.array_equal(e.frames, frames.numpy())
    with torch.no_grad():
        from tcpnet.data.transforms import to_float
        torch.testing.assert_close(e.logits, trained(to_float(frames, trained.input_config)), rtol=0, atol=1e-6)
    assert (e.tca > 0).all() and (e.tca < 1).all()
    assert e.topk(2)[0]["name"] in trained.class_names

    files = write_explanation(e, tmp_path, "squares", view=1)
    with Image.open(files["sheet"]) as img:
        assert img.format == "PNG" and img.width > 4 * 112 and img.height > 3 * 112
        img.load()
    with av.open(str(files["mp4"])) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    assert len(decoded) == T
    assert decoded[0].shape[0] % 2 == 0 and decoded[0].shape[1] >= 3 * 112  # frame | Grad-CAM | TSA


def test_explain_video_uses_the_predict_pipeline(tmp_path):
    model = make_model("tcp_tiny")
    path = write_video(tmp_path / "v.mp4", make_frames(20, 48, 80, seed=5))
    e = explain_video(model, path)
    pred = predict_videos(model, [str(path)], topk=5, fusion="mean-prob")[0]
    assert [d["label"] for d in e.topk(5)] == [d["label"] for d in pred.topk]
    np.testing.assert_allclose([d["prob"] for d in e.topk(5)], [d["prob"] for d in pred.topk], rtol=0, atol=1e-6)
    assert e.frame_indices == [[2, 7, 12, 17]]  # segment centres of 20 frames
    size = model.input_config.crop_size
    assert e.frames.shape == (1, T, size, size, 3)

    multi = explain_video(model, path, views="3x2")
    assert multi.num_views == 6 and len(set(multi.target.tolist())) == 1
    assert int(multi.target[0]) == int(multi.scores().argmax())  # the class of the fused scores
    assert len(multi.frame_indices) == 6 and multi.frame_indices[0] != multi.frame_indices[1]


@pytest.mark.slow
def test_explain_command(tmp_path):
    from tcpnet.checkpoints import save_model

    model = make_model("tcp_tiny")
    save_model(model, tmp_path / "m.pt", class_names=["a", "b", "c", "d", "e"])
    write_video(tmp_path / "one.mp4", make_frames(12, 48, 64, seed=1))
    (tmp_path / "bad.mp4").write_text("not a video")
    proc = subprocess.run([sys.executable, "-m", "tcpnet", "explain", "one.mp4", "bad.mp4", "--checkpoint", "m.pt",
                           "--out", "ex", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tcpnet: error:")]
    assert len(errors) == 1 and "bad.mp4" in errors[0]
    out = json.loads(proc.stdout)
    assert [r["video"] for r in out] == ["one.mp4", "bad.mp4"] and "error" in out[1]
    r = out[0]
    assert r["target"]["name"] in "abcde" and len(r["topk"]) == 5 and len(r["views"][0]["importance"]) == T
    assert len(r["views"][0]["tca"]) == T and r["files"] == {"sheet": "ex/one.png", "mp4": "ex/one.mp4"}
    assert (tmp_path / "ex/one.png").stat().st_size > 0 and (tmp_path / "ex/one.mp4").stat().st_size > 0


class _RenamedAttentionHead(torch.nn.Module):
    """A head from outside TCP: GCP pooling after TSA and TCA kept under its own attribute names;
    ``explain_modules`` is the only way explain can find them."""

    def __init__(self, gcp: torch.nn.Module, seed: int = 0) -> None:
        from tcpnet.heads.attention import TCA, TSA

        super().__init__()
        self.gcp = gcp
        self.spatial, self.channel = TSA(gcp.dim), TCA(gcp.dim)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # non-zero BN so that the attention changes the output
            self.spatial.norm.weight.copy_(torch.randn(gcp.dim, generator=g))

    def forward(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        z = self.gcp.reduce(x)
        return self.gcp.pool(self.channel(z, self.spatial(z, num_segments), num_segments), num_segments)

    def explain_modules(self):
        return {"tsa": self.spatial, "tca": self.channel}


def test_explain_reads_the_maps_a_head_declares():
    """Explain hooks what ``head.explain_modules()`` returns, whatever the attribute names: a
    GCP-based head with TSA/TCA as ``spatial``/``channel`` gets TSA and TCA maps equal to the
    modules' own attention; a TCP head that declares nothing gets none (and the same logits)."""
    model = make_model("gcp_tiny")
    model.head = _RenamedAttentionHead(model.head).eval()
    x = clips_for(model, 2, seed=4)
    with torch.no_grad():
        z = model.head.gcp.reduce(model.backbone(model.frames(x)))
        received = model.head.spatial.affinity(z, T).mean(1).view(2, T, *z.shape[2:])
        tsa = received / received.flatten(1).amax(1).view(2, 1, 1, 1)
        tca = model.head.channel(z, torch.ones_like(z), T)[:, :, 0, 0].mean(1).view(2, T)
    e = explain_clip(model, x)
    torch.testing.assert_close(e.tsa, tsa, rtol=0, atol=1e-6)
    torch.testing.assert_close(e.tca, tca, rtol=0, atol=1e-6)

    tcp = make_model("tcp_tiny")
    declared = explain_clip(tcp, x)
    assert set(tcp.head.explain_modules()) == {"tsa", "tca"} and declared.tsa is not None
    tcp.head.explain_modules = lambda: {}
    silent = explain_clip(tcp, x)
    assert silent.tsa is None and silent.tca is None
    torch.testing.assert_close(silent.logits, declared.logits, rtol=0, atol=0)


def test_explain_names_no_head_attribute():
    """apps/explain.py reads attention only through ``explain_modules``: no TCP attribute name in it."""
    import ast
    import tcpnet.apps.explain as module

    tree = ast.parse(open(module.__file__).read())
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not names & {"TCP_att", "TSA", "TCA"}
