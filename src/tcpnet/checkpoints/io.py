"""Reading and writing weight files safely: tensors only, never arbitrary pickled code.

Every ``.pth``/``.pth.tar``/``.pt`` file goes through ``torch.load(map_location="cpu",
weights_only=True)`` (the authors' scripts unpickled anything, onto the GPU
that saved it). ``.safetensors`` files are read with the safetensors library. Writes are atomic
(temporary file in the same folder, then rename), so an interrupted save never leaves a
truncated model behind.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from tcpnet.models import unwrap_model

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

MODEL_FORMAT = "tcpnet-model"
MODEL_FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A weight file cannot be read, is unsafe, or does not fit the model it is loaded into."""


def _numpy_safe_globals() -> List[Any]:
    """Numpy scalars (e.g. ``best_prec1`` saved as ``np.float64``) are plain numbers: allow them.

    Only numeric dtypes are allow-listed; an object-dtype scalar would still be refused.
    The scalar constructor is listed under both its numpy-2 and numpy-1 module paths.
    """
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: List[Any] = [
        (scalar, "numpy._core.multiarray.scalar"),
        (scalar, "numpy.core.multiarray.scalar"),
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType",
                     "BoolDType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


@contextmanager
def _allow_numpy_scalars() -> Iterator[None]:
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        yield


def _refusal_message(path: Path, err: BaseException) -> str:
    detail = str(err).strip().splitlines()
    reason = next((line.strip() for line in detail if "Unsupported" in line or "GLOBAL" in line),
                  detail[0] if detail else type(err).__name__)
    return (
        f"{path}: refused to load: the file needs arbitrary Python unpickling ({reason}). "
        "Unpickling an untrusted file can run any code on this machine (that is how malicious "
        "checkpoints work), so tcpnet only reads tensors and plain containers "
        "(torch.load(weights_only=True)). If you trust the file and know where it came from, "
        "re-save just its tensors in a trusted environment, e.g. "
        "torch.save({'state_dict': ckpt['state_dict']}, 'clean.pth'), or export it to .safetensors."
    )


def read_safetensors(path: PathLike) -> Dict[str, Any]:
    """Tensors of a ``.safetensors`` file; our metadata (if any) becomes model-file fields."""
    from safetensors import safe_open

    path = Path(path)
    try:
        tensors: Dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as e:  # safetensors raises its own SafetensorError / OSError
        raise CheckpointError(f"{path}: not a readable .safetensors file: {e}") from e
    if meta.get("format") != MODEL_FORMAT:
        return tensors
    try:
        out: Dict[str, Any] = {
            "format": MODEL_FORMAT,
            "version": int(meta.get("version", MODEL_FORMAT_VERSION)),
            "model_name": meta["model_name"],
            "model_kwargs": json.loads(meta.get("model_kwargs", "{}")),
            "num_classes": int(meta["num_classes"]),
            "input_config": json.loads(meta.get("input_config", "null")),
            "class_names": json.loads(meta.get("class_names", "null")),
            "state_dict": tensors,
        }
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed tcpnet metadata in .safetensors header: {e!r}") from e
    return out


def read_file(path: PathLike) -> Any:
    """Load a weight file on the CPU without executing code: torch files or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        with _allow_numpy_scalars():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch wraps every unpickling failure in the same text. A pickle (b"\x80" protocol
        # header, or torch's zip) asking for an unsupported global or opcode wants code to run;
        # any other failure is a damaged or foreign file.
        with open(path, "rb") as f:
            head = f.read(2)
        if "Unsupported global" in str(e) or ("Unsupported" in str(e) and head[:1] in (b"\x80", b"P")):
            raise CheckpointError(_refusal_message(path, e)) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or not a "
                              "checkpoint): the pickle data is damaged") from None
    except Exception as e:  # noqa: BLE001 - torch's readers fail on arbitrary bytes with
        # RuntimeError, KeyError ('101' for a text file), IndexError, EOFError, ...: all mean the same
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or not a "
                              f"checkpoint): {type(e).__name__}: {detail}") from e


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Write through ``write(tmp_path)`` into a temporary file in the same folder, fsync it, then
    rename it over ``path``: a crash or a full disk at any instant leaves either the old file or
    the new one, never a torn one, and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the file itself is synced
    finally:
        os.close(dir_fd)
    return path


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _model_info(model: nn.Module, class_names: Optional[Sequence[str]]) -> Dict[str, Any]:
    missing = [a for a in ("model_name", "model_kwargs", "num_classes", "input_config")
               if not hasattr(model, a)]
    if missing:
        raise CheckpointError(
            f"cannot save {type(model).__name__}: it lacks {missing}; save models made by "
            "tcpnet.build_model (or save model.state_dict() yourself)")
    names = None
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(names) != int(model.num_classes):
            raise CheckpointError(
                f"class_names has {len(names)} entries but the model has {model.num_classes} classes")
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "model_name": str(model.model_name),
        "model_kwargs": _plain(dict(model.model_kwargs)),
        "num_classes": int(model.num_classes),
        "input_config": model.input_config.to_dict(),
        "class_names": names,
    }


def _plain(value: Any) -> Any:
    """Tuples -> lists etc., so the value is JSON- and weights_only-loadable."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise CheckpointError(
        f"model_kwargs value {value!r} of type {type(value).__name__} cannot be stored in a model "
        "file (only str/int/float/bool/None/lists/dicts)")


def _cpu_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def model_file_fields(model: nn.Module, class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The fields of a tcpnet model file (what rebuilds the model, plus its CPU weights); a
    training checkpoint is these fields plus the training state, so it is a model file too."""
    model = unwrap_model(model)
    return {**_model_info(model, class_names), "state_dict": _cpu_state(model)}


def save_model(model: nn.Module, path: PathLike, class_names: Optional[Sequence[str]] = None) -> Path:
    """Save ``model`` as a tcpnet model file (weights + what is needed to rebuild it)."""
    info = model_file_fields(model, class_names)
    out = atomic_torch_save(info, path)
    log.info("saved %s (%d tensors) to %s", info["model_name"], len(info["state_dict"]), out)
    return out


def export_safetensors(model: nn.Module, path: PathLike,
                       class_names: Optional[Sequence[str]] = None) -> Path:
    """Write weights to ``.safetensors`` with model_name/kwargs/input_config as JSON metadata."""
    from safetensors.torch import save_file

    model = unwrap_model(model)
    info = _model_info(model, class_names)
    meta = {
        "format": MODEL_FORMAT,
        "version": str(MODEL_FORMAT_VERSION),
        "model_name": info["model_name"],
        "model_kwargs": json.dumps(info["model_kwargs"]),
        "num_classes": str(info["num_classes"]),
        "input_config": json.dumps(info["input_config"]),
    }
    if info["class_names"] is not None:
        meta["class_names"] = json.dumps(info["class_names"])
    tensors = _cpu_state(model)
    out = atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    log.info("exported %s (%d tensors) to %s", info["model_name"], len(tensors), out)
    return out
