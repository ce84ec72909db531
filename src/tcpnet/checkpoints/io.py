"""Reading and writing weight files safely: tensors only, never arbitrary pickled code.

Every ``.pth``/``.pth.tar``/``.pt`` file goes through ``torch.load(map_location="cpu",
weights_only=True)`` (the authors' scripts unpickled anything, onto the GPU
that saved it). ``.safetensors`` files are read with the safetensors library. Writes are atomic
(temporary file in the same folder, then rename), so an interrupted save never leaves a
truncated model behind; the file's permissions follow the umask, as a plain
``open(path, "w")`` would give, and a full disk is one "no space left on device" error with no
temporary file left.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

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


# What torch's weights_only unpickler says when a pickle asks for code ("Unsupported global",
# "unsupported GLOBAL posix.system whose module posix is blocked", "Unsupported operand 149").
_UNSAFE = re.compile(r"unsupported (global|operand|class)|is blocked", re.IGNORECASE)


def _refusal_message(path: Path, err: BaseException) -> str:
    detail = str(err).strip().splitlines()
    reason = next((line.strip() for line in detail if _UNSAFE.search(line)),
                  detail[0] if detail else type(err).__name__)
    return (
        f"{path}: refused as unsafe: the file needs arbitrary Python unpickling ({reason}). "
        "Unpickling an untrusted file can run any code on this machine (that is how malicious "
        "checkpoints work), so tcpnet only reads tensors and plain containers "
        "(torch.load(weights_only=True)). If you trust the file and know where it came from, "
        "re-save just its tensors in a trusted environment, e.g. "
        "torch.save({'state_dict': ckpt['state_dict']}, 'clean.pth'), or export it to .safetensors."
    )


def _first_sentence(err: BaseException) -> str:
    """The first line of an error, cut after its first sentence: torch appends paragraphs of
    advice ("This is an internal miniz error. If you are seeing this error, ...")."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0].strip()
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", line, maxsplit=1)[0].rstrip(".")


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
            "multi_label": json.loads(meta.get("multi_label", "false")),
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
        if _UNSAFE.search(str(e)) and head[:1] in (b"\x80", b"P"):
            raise CheckpointError(_refusal_message(path, e)) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or not a "
                              "checkpoint): the pickle data is damaged") from None
    except Exception as e:  # noqa: BLE001 - torch's readers fail on arbitrary bytes with
        # RuntimeError, KeyError ('101' for a text file), IndexError, EOFError, ...: all mean the same
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or not a "
                              f"checkpoint): {type(e).__name__}: {_first_sentence(e)}") from e


def check_not_same_file(src: PathLike, dst: PathLike, what: str = "output") -> None:
    """Refuse to write ``dst`` when it is the file ``src`` (any spelling: ``./X``, a symlink, a
    hard link), before anything is written: replacing the input would destroy it."""
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise CheckpointError(f"{dst}: the {what} is the input file {src}; choose another {what} path "
                              "(nothing was written)")


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """Permissions of a new file: 0666 minus the umask, as ``open(path, "w")`` gives (``mkstemp``
    creates 0600, which the rest of a team sharing an output folder cannot read)."""
    return 0o666 & ~_umask()


def _disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT, or torch's path writer stopping short ("[enforce fail at
    inline_container.cc:...] unexpected pos N vs M"), which is how a full disk reaches it."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    return isinstance(err, RuntimeError) and ("unexpected pos" in text or "file write failed" in text)


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Write through ``write(tmp_path)`` into a temporary file in the same folder, fsync it, then
    rename it over ``path``: a crash or a full disk at any instant leaves either the old file or
    the new one, never a torn one, and no temporary file behind. The file's permissions follow
    the umask (:func:`_file_mode`); a full disk raises "no space left on device (<path>)"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _disk_full(e):
            raise CheckpointError(f"no space left on device ({path}); nothing was written") from e
        raise
    _sync_dir(path.parent)
    return path


def _sync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the filesystem can fsync a directory)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the file itself is synced
    finally:
        os.close(dir_fd)


def _write_bytes_through_python(tmp: str, write: Callable[[IO[bytes]], None]) -> None:
    """``write(file)`` into ``tmp`` opened by Python, so that a failed write raises the OSError
    with its errno (torch's and safetensors' own path writers lose it)."""
    with open(tmp, "wb") as f:
        write(f)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    return atomic_write(path, lambda tmp: _write_bytes_through_python(tmp, lambda f: torch.save(obj, f)))


def _model_info(model: nn.Module, class_names: Optional[Sequence[str]]) -> Dict[str, Any]:
    """What rebuilds ``model``: its name, kwargs, classes, input config, class names (default the
    model's own ``class_names``) and whether it was trained on multi-label data."""
    missing = [a for a in ("model_name", "model_kwargs", "num_classes", "input_config")
               if not hasattr(model, a)]
    if missing:
        raise CheckpointError(
            f"cannot save {type(model).__name__}: it lacks {missing}; save models made by "
            "tcpnet.build_model (or save model.state_dict() yourself)")
    names = None
    if class_names is None:
        class_names = getattr(model, "class_names", None)
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
        "multi_label": bool(getattr(model, "multi_label", False)),
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
    """Save ``model`` as a tcpnet model file (weights + what is needed to rebuild it);
    ``class_names`` default to ``model.class_names``."""
    info = model_file_fields(model, class_names)
    out = atomic_torch_save(info, path)
    log.info("saved %s (%d tensors) to %s", info["model_name"], len(info["state_dict"]), out)
    return out


def export_safetensors(model: nn.Module, path: PathLike,
                       class_names: Optional[Sequence[str]] = None) -> Path:
    """Write weights to ``.safetensors`` with the model-file fields (model_name, kwargs,
    input_config, class names, multi_label) as JSON metadata."""
    from safetensors.torch import save

    model = unwrap_model(model)
    info = _model_info(model, class_names)
    meta = {
        "format": MODEL_FORMAT,
        "version": str(MODEL_FORMAT_VERSION),
        "model_name": info["model_name"],
        "model_kwargs": json.dumps(info["model_kwargs"]),
        "num_classes": str(info["num_classes"]),
        "input_config": json.dumps(info["input_config"]),
        "multi_label": json.dumps(info["multi_label"]),
    }
    if info["class_names"] is not None:
        meta["class_names"] = json.dumps(info["class_names"])
    tensors = _cpu_state(model)
    data = save(tensors, metadata=meta)
    out = atomic_write(path, lambda tmp: _write_bytes_through_python(tmp, lambda f: f.write(data)))
    log.info("exported %s (%d tensors) to %s", info["model_name"], len(tensors), out)
    return out
