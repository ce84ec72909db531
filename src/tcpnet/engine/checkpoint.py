"""Training checkpoints: the model-file fields plus optimizer, scaler, epoch, best metric, RNG
states and config. They are written and read by the same code as model files
(``tcpnet.checkpoints.io``): atomic writes, ``weights_only`` reads, one ``CheckpointError``.

A training checkpoint is also a valid model file, so
``tcpnet.checkpoints.build_model_from_checkpoint("best.pt")`` works on it.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from tcpnet.checkpoints.io import CheckpointError, atomic_torch_save, model_file_fields, read_file
from tcpnet.config import Config, ConfigError, DataConfig, config_to_dict
from tcpnet.data.formats import frame_template_for

logger = logging.getLogger(__name__)

__all__ = ["save_training_checkpoint", "load_training_checkpoint", "capture_rng_state",
           "restore_rng_state", "prepare_output_dir", "config_differences", "repair_best", "repair_ema",
           "check_fresh_output_dir", "OutputLock", "RESUMABLE_KEYS", "CHECKPOINT_FILES"]

# Config keys a resumed run may change: the run's length and bookkeeping, never the recipe.
RESUMABLE_KEYS = ("train.epochs", "train.resume", "train.auto_resume", "train.force_resume",
                  "train.checkpoint_every", "train.log_every", "train.eval_every", "data.num_workers",
                  "data.cache_decoded_mb", "data.decode_timeout",
                  "data.cache_rebuild", "test.batch_size", "device",
                  "retain_freed_memory", "output_dir", "train.log_grad_norm", "imports")
# Keys that hold a path: two spellings of the same file (relative / absolute) are the same recipe.
PATH_KEYS = ("data.root", "data.train_list", "data.val_list", "data.test_list", "data.class_names",
             "model.pretrained", "test.checkpoint", "data.cache_features")
# The files of a run's checkpoint set, in the order they are written at the end of an epoch.
CHECKPOINT_FILES = ("last.pt", "best.pt", "ema.pt")
LOCK_FILE = ".tcpnet.lock"

_REQUIRED = ("state_dict", "optimizer", "epoch")


def save_training_checkpoint(ckpt: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Write ``ckpt`` atomically (temp file, fsync, rename) to ``path``. A failed write (full
    disk, lost mount) leaves the previous file untouched and says so in a ``CheckpointError``."""
    path = Path(path)
    try:
        return atomic_torch_save(ckpt, path)
    except (OSError, RuntimeError) as e:
        reason = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e).splitlines()[0]
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise CheckpointError(f"{path}: could not write the checkpoint ({reason}); {kept}") from e


def prepare_output_dir(out_dir: Union[str, Path]) -> Path:
    """Create ``out_dir``, prove it is writable before any work, and remove the temporary files
    that a write killed half-way left behind (``.last.pt.*.tmp`` and alike)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OSError(e.errno or errno.EACCES, f"output_dir is not writable ({e.strerror or e})",
                      str(out)) from None
    for name in CHECKPOINT_FILES:
        if (out / name).exists() and not (out / name).is_file():
            raise OSError(errno.EISDIR, f"{name} in output_dir is not a regular file, so no checkpoint could be "
                          "written there; remove it or choose another output_dir", str(out / name))
    for stale in out.glob(".*.pt.*.tmp"):
        logger.info("removing %s, left by an interrupted checkpoint write", stale)
        stale.unlink(missing_ok=True)
    return out


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "kwargs":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _same_path(a: Any, b: Any) -> bool:
    if not (isinstance(a, str) and isinstance(b, str)) or not a or not b:
        return a == b
    return os.path.normpath(os.path.abspath(os.path.expanduser(a))) == \
        os.path.normpath(os.path.abspath(os.path.expanduser(b)))


def _frame_template(cfg: Dict[str, Any]) -> Any:
    """The frame template a config's data section resolves to (a checkpoint written when the config
    spelled out the default, ``img_{:05d}.jpg``, means what ``null`` means now for a TSN list)."""
    data = dict(cfg.get("data") or {})
    try:
        known = {f.name for f in dataclasses.fields(DataConfig)}
        return frame_template_for(DataConfig(**{k: v for k, v in data.items() if k in known}),
                                  data.get("train_list"))
    except Exception:  # noqa: BLE001 - an unreadable list or format: compare as written
        return data.get("frame_template")


def config_differences(saved: Dict[str, Any], current: Dict[str, Any],
                       allowed: Iterable[str] = RESUMABLE_KEYS) -> List[str]:
    """``key: checkpoint X, config Y`` for every setting that differs, except ``allowed`` ones.
    A key the saved config lacks (written before the key existed) counts as its default, and a
    path counts as the same when both spellings name the same file."""
    a = {**_flatten(config_to_dict(Config())), **_flatten(saved)}
    b = _flatten(current)
    a["data.frame_template"], b["data.frame_template"] = (_frame_template(saved), _frame_template(current))
    skip = set(allowed)
    out = []
    for k in sorted(set(a) | set(b)):
        if k in skip or a.get(k) == b.get(k) or (k in PATH_KEYS and _same_path(a.get(k), b.get(k))):
            continue
        out.append(f"{k}: checkpoint {a.get(k)!r}, config {b.get(k)!r}")
    return out


def check_resume_config(path: Union[str, Path], saved: Optional[Dict[str, Any]], current: Dict[str, Any],
                        force: bool) -> None:
    """Stop a resume whose config changed beyond the run length, naming every differing key
    (``train.force_resume=true`` resumes anyway)."""
    if not saved:
        return
    diffs = config_differences(saved, current)
    if diffs and not force:
        raise ConfigError(f"{path}: the config differs from the one this run was started with: "
                          + "; ".join(diffs) + ". Use a new output_dir for a new run, or "
                          "train.force_resume=true to continue with the new settings")
    if diffs:
        logger.warning("resuming with a changed config (train.force_resume): %s", "; ".join(diffs))


def repair_best(out_dir: Union[str, Path], last: Dict[str, Any]) -> bool:
    """Make ``best.pt`` agree with ``last.pt``: a kill between writing the two leaves an older
    best.pt behind while last.pt records that its own epoch was the best. Returns True if repaired."""
    out = Path(out_dir)
    best_epoch, epoch = int(last.get("best_epoch", -1)), int(last.get("epoch", 0))
    if best_epoch < 0 or best_epoch != epoch - 1 or int(last.get("iter", 0)) != 0:
        return False
    best = out / "best.pt"
    if best.is_file():
        try:
            if int(read_file(best).get("epoch", -1)) == epoch:
                return False
        except CheckpointError:
            pass  # unreadable: replace it
    tmp = out / f".best.pt.{os.getpid()}.tmp"
    try:
        shutil.copyfile(out / "last.pt", tmp)
        os.replace(tmp, best)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{best}: could not restore it from last.pt ({os.strerror(e.errno) if e.errno else e}); "
                              f"{'the old best.pt is intact' if best.exists() else 'no best.pt was written'}") from e
    logger.warning("best.pt was older than last.pt's best epoch %d (a run killed between the two "
                   "writes); restored it from last.pt", best_epoch + 1)
    return True


def load_training_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a training checkpoint on CPU without running code; any unreadable, truncated,
    malicious or non-training file is one ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training checkpoint not found")
    ckpt = read_file(path)
    missing = [k for k in _REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a tcpnet training checkpoint (missing {missing}); to "
                              "start from a model file use model.pretrained instead of train.resume")
    return ckpt


def capture_rng_state() -> Dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as weights_only-loadable objects."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def repair_ema(out_dir: Union[str, Path], ema_model: Any, class_names: Optional[Sequence[str]], epoch: int) -> bool:
    """Make ``ema.pt`` agree with a resumed state at an epoch boundary (a kill between ``best.pt``
    and ``ema.pt`` leaves an older one behind). ``ema_model`` holds the EMA restored from last.pt.
    Returns True if ema.pt was (re)written."""
    path = Path(out_dir) / "ema.pt"
    if path.is_file():
        try:
            if int(read_file(path).get("epoch", -1)) == epoch:
                return False
        except CheckpointError:
            pass  # unreadable: replace it
    save_training_checkpoint({**model_file_fields(ema_model, class_names), "epoch": epoch}, path)
    logger.warning("ema.pt did not hold the EMA weights of epoch %d (a run stopped between the checkpoint "
                   "writes); rewrote it from last.pt", epoch)
    return True


_RUN_FILES = ("best.pt", "ema.pt")


def check_fresh_output_dir(out_dir: Union[str, Path]) -> None:
    """A run that resumes nothing must not overwrite another run's results: refuse an output_dir
    that holds checkpoints or a metrics log without a ``last.pt`` to continue from."""
    out = Path(out_dir)
    found = [n for n in ("last.pt", *_RUN_FILES) if (out / n).exists()]
    if found:
        raise ConfigError(f"{out}: output_dir holds {', '.join(found)} of an earlier run, which a new run would "
                          "overwrite; resume it (train.auto_resume=true with its last.pt, or train.resume=PATH), "
                          "or use another output_dir")


class OutputLock:
    """An exclusive lock on an output_dir for the life of a run (a POSIX record lock on
    ``.tcpnet.lock``): two runs writing the same checkpoints would corrupt each other's set. A
    record lock belongs to the process, so forked DataLoader workers do not inherit it and a
    killed run's lock goes with it."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path, self._handle = path, handle

    @classmethod
    def acquire(cls, out_dir: Union[str, Path]) -> "OutputLock":
        import fcntl

        path = Path(out_dir) / LOCK_FILE
        handle = open(path, "a+")
        try:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(f"{out_dir}: output_dir is in use by another tcpnet run ({holder}); wait for it "
                              "to finish or use another output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
