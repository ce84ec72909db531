"""ONNX (checked in onnxruntime) and TorchScript exports: dynamic batch, same logits as PyTorch.

Tolerance: both sides run the same float32 graph on the CPU; only kernel choice and summation
order differ (ORT fuses conv+BN), which moves logits of order 1 by ~1e-7..1e-6. We assert
max |diff| <= 1e-4 (100x margin; a wrong graph gives O(1) errors).
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tcpnet.checkpoints import save_model
from tcpnet.apps.export import export_model, export_onnx, export_torchscript, verify_export
from tcpnet.models import build_model

TOL = 1e-4


def tiny(name="tcp_tiny", **kw):
    torch.manual_seed(0)
    m = build_model(name, num_classes=6, num_segments=4, **kw).eval()
    torch.nn.init.normal_(m.fc.weight, std=0.3)  # logits of order 1
    return m


def clips(batch, model, seed):
    g = torch.Generator().manual_seed(seed)
    ic = model.input_config
    return torch.randn(batch, 3, model.num_segments, ic.crop_size, ic.crop_size, generator=g)


def run_onnx(path, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["clips"]
    return sess.run(None, {"clips": x.numpy()})[0]


@pytest.mark.slow
def test_onnx_dynamo_dynamic_batch(tmp_path):
    """Default exporter (torch.export -> ONNX, opset 18) on the TCP head with all attention parts."""
    import onnx

    m = tiny(dim=16, mid_channels=32)
    m.class_names = list("abcdef")
    path = export_onnx(m, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model_name"] == "tcp_tiny" and json.loads(meta["class_names"]) == list("abcdef")
    assert json.loads(meta["input_config"])["crop_size"] == m.input_config.crop_size
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic batch axis
    for b in (1, 3):  # exported with batch 2
        x = clips(b, m, seed=b)
        with torch.no_grad():
            ref = m(x).numpy()
        out = run_onnx(path, x)
        assert out.shape == (b, 6)
        assert np.abs(out - ref).max() <= TOL, np.abs(out - ref).max()
        assert np.abs(ref).max() > 0.1  # the comparison is not between near-zero logits


@pytest.mark.parametrize("name, kw", [
    ("tcp_tiny", dict(dim=16, mid_channels=32, temporal_shift="blockres")),  # TSM shift + TCP
    ("tsn_tiny", {}),                                                      # GAP head
    ("gcp_tiny", dict(dim=16, mid_channels=32)),                           # plain iSQRT-COV
])
def test_onnx_tracing_exporter(tmp_path, name, kw):
    m = tiny(name, **kw)
    path = export_onnx(m, tmp_path / f"{name}.onnx", exporter="torchscript")
    for b in (1, 4):
        x = clips(b, m, seed=10 + b)
        with torch.no_grad():
            ref = m(x).numpy()
        assert np.abs(run_onnx(path, x) - ref).max() <= TOL


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_dynamic_batch_and_metadata(tmp_path):
    m = tiny(dim=16, mid_channels=32)
    path = export_torchscript(m, tmp_path / "m.ts")
    files = {"tcpnet.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=files)
    assert json.loads(files["tcpnet.json"])["num_segments"] == "4"
    for b in (1, 5):
        x = clips(b, m, seed=20 + b)
        with torch.no_grad():
            assert (loaded(x) - m(x)).abs().max().item() <= TOL
    res = verify_export(m, path, "torchscript")
    assert res.ok and res.max_abs_diff <= TOL and res.tolerance >= 1e-3


def test_export_model_refuses_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="format"):
        export_model(tiny(), tmp_path / "x", "tflite")


@pytest.mark.slow
def test_cli_export_onnx_and_torchscript(tmp_path):
    """`tcpnet export` from a model file: prints the measured max difference and passes its check."""
    m = tiny(dim=16, mid_channels=32)
    save_model(m, tmp_path / "model.pt")
    for fmt, out in (("onnx", "m.onnx"), ("torchscript", "m.ts")):
        proc = subprocess.run([sys.executable, "-m", "tcpnet", "export", "--checkpoint", str(tmp_path / "model.pt"),
                               "--format", fmt, "--output", str(tmp_path / out)], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr
        line = proc.stdout.strip().splitlines()[-1]
        assert line.startswith(f"wrote {tmp_path / out} ({fmt}, dynamic batch); max |{fmt} - torch| = ")
        diff = float(line.split("= ")[1].split()[0])
        assert diff <= TOL
    x = clips(3, m, seed=5)
    with torch.no_grad():
        ref = m(x).numpy()
    assert np.abs(run_onnx(tmp_path / "m.onnx", x) - ref).max() <= TOL
