"""Export a trained model to ONNX or TorchScript, with a dynamic batch axis, and check the result.

Input ``clips``: float32 (B, 3, T, H, W), normalised as the model's input config says; output
``logits`` (B, K). The covariance-pooling ops (tcpnet.ops) take plain tensor ops when no
gradient is needed (their custom autograd Functions are used only in training), and the
upper-triangle indices are a constant, so both exporters see an ordinary graph:

* ONNX: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript, opset 18) by default;
  ``exporter="torchscript"`` selects the older tracing exporter (faster to run, same graph).
* TorchScript: ``torch.jit.trace`` in eval mode (the model has no data-dependent control flow).

After writing, :func:`verify_export` runs the file (onnxruntime / ``torch.jit.load``) on a random
clip with a batch size different from the one exported with, and compares to PyTorch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "ExportResult", "export_onnx", "export_torchscript", "verify_export", "export_model",
           "example_input", "DEFAULT_RTOL"]

FORMATS = ("onnx", "torchscript")
# Tolerance of the check: |exported - torch| <= DEFAULT_RTOL * max(1, max|torch logits|). Both run
# the same float32 graph; differences come only from kernel order (ORT fuses conv+BN, reorders
# sums). Measured on CPU: ~1e-8 for tcp_tiny, ~1e-2 on logits of magnitude ~27 (random-init
# TEA-R50, 4e-4 relative); 1e-3 relative leaves margin yet catches a wrong graph (errors O(1)).
DEFAULT_RTOL = 1e-3


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    tolerance: float
    ok: bool


def example_input(model: nn.Module, batch_size: int = 2, seed: int = 0) -> torch.Tensor:
    """A random normalised clip batch (B, 3, T, crop, crop) for the model's input config."""
    ic = model.input_config
    g = torch.Generator().manual_seed(seed)
    param = next(model.parameters())
    return torch.randn(batch_size, 3, model.num_segments, ic.crop_size, ic.crop_size, generator=g).to(param.device)


def _metadata(model: nn.Module) -> dict:
    ic = getattr(model, "input_config", None)
    return {
        "model_name": str(getattr(model, "model_name", "")),
        "num_classes": str(int(model.num_classes)),
        "num_segments": str(int(model.num_segments)),
        "input_config": json.dumps(ic.to_dict() if ic is not None else None),
        "class_names": json.dumps(getattr(model, "class_names", None)),
        "input_layout": "clips: float32 (B, 3, T, H, W), normalised; output logits (B, K)",
    }


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence what tracing/exporting always says about these models: shape checks (Python
    bools/ints) and the constant triu index become constants, and torch.jit is deprecated."""
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
        yield


def export_onnx(model: nn.Module, path: Union[str, Path], *, exporter: str = "dynamo", opset: int = 18,
                batch_size: int = 2) -> Path:
    """Write ``model`` (eval mode) to ONNX with a dynamic batch axis and tcpnet metadata."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = example_input(model, batch_size)
    with torch.no_grad(), _quiet_tracing():
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=["clips"], output_names=["logits"],
                                        dynamic_shapes={"x": {0: batch}}, opset_version=opset, verbose=False)
            program.save(str(path))
        elif exporter == "torchscript":
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["clips"], output_names=["logits"],
                              dynamic_axes={"clips": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=min(opset, 17))
        else:
            raise ValueError(f"exporter: expected 'dynamo' or 'torchscript', got {exporter!r}")
    proto = onnx.load(str(path))
    for key, value in _metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def export_torchscript(model: nn.Module, path: Union[str, Path], *, batch_size: int = 2) -> Path:
    """Trace ``model`` (eval mode) and save it; the batch axis stays dynamic (shape ops are traced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = example_input(model, batch_size)
    with torch.no_grad(), _quiet_tracing():
        traced = torch.jit.trace(model, (x,), check_trace=False)
        # torch.jit is deprecated in favour of torch.export (whose .pt2 files need torch to run
        # too); TorchScript is still what C++/mobile deployments load, so we keep it as a format
        extra = {"tcpnet.json": json.dumps(_metadata(model))}
        torch.jit.save(traced, str(path), _extra_files=extra)
    return path


def verify_export(model: nn.Module, path: Union[str, Path], fmt: str, *, batch_size: int = 3,
                  rtol: float = DEFAULT_RTOL) -> ExportResult:
    """Run the exported file on a random clip batch and compare its logits to ``model``'s."""
    model = model.eval()
    x = example_input(model, batch_size, seed=1)
    with torch.no_grad():
        ref = model(x).float().cpu()
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy()})[0])
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            got = loaded(x.cpu()).float()
    else:
        raise ValueError(f"format: expected one of {FORMATS}, got {fmt!r}")
    if got.shape != ref.shape:
        raise RuntimeError(f"{path}: exported model returned shape {tuple(got.shape)}, PyTorch {tuple(ref.shape)}")
    diff = float((got - ref).abs().max())
    tol = rtol * max(1.0, float(ref.abs().max()))
    return ExportResult(Path(path), fmt, diff, tol, diff <= tol)


def export_model(model: nn.Module, output: Union[str, Path], fmt: str, *, exporter: str = "dynamo",
                 opset: int = 18, rtol: float = DEFAULT_RTOL, verify: bool = True) -> ExportResult:
    """Export ``model`` to ``output`` as ``fmt`` ("onnx" | "torchscript") and verify it.

    Raises RuntimeError when the exported model differs from PyTorch by more than the tolerance.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {fmt!r}")
    model = model.cpu().eval()
    if fmt == "onnx":
        path = export_onnx(model, output, exporter=exporter, opset=opset)
    else:
        path = export_torchscript(model, output)
    if not verify:
        return ExportResult(Path(path), fmt, float("nan"), float("nan"), True)
    result = verify_export(model, path, fmt, rtol=rtol)
    logger.info("%s: max |%s - torch| = %.3g (tolerance %.3g)", path, fmt, result.max_abs_diff, result.tolerance)
    if not result.ok:
        raise RuntimeError(f"{path}: exported {fmt} model differs from PyTorch by {result.max_abs_diff:.3g} "
                           f"> tolerance {result.tolerance:.3g}")
    return result
