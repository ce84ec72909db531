"""The hook contract: a :class:`Step` record that the loop fills in, and :class:`Hook` methods that
the loop calls at fixed points. Each registered hook class decides from the run whether it is on
(:meth:`Hook.from_run` returns None when off)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, TypeVar

import torch

from tcpnet.utils.plugins import import_submodules

__all__ = ["Step", "Hook", "register_hook", "build_hooks", "list_hooks"]


@dataclass
class Step:
    """One training iteration as the loop sees it. Hooks may replace ``clips``/``loss_targets``
    (before the forward pass), set ``skip`` (after backward: no optimizer step, no statistics)
    or ``stop`` (after the iteration: "checkpoint" or "signal")."""

    epoch: int
    iteration: int                          # 0-based index in the epoch
    clips: torch.Tensor
    targets: torch.Tensor                   # hard labels: accuracy counts these
    loss_targets: torch.Tensor              # what the loss sees (soft after mixup)
    indices: Optional[torch.Tensor] = None  # dataset indices of the batch, to name its videos
    do_step: bool = True                    # the optimizer steps after this iteration
    last: bool = False                      # the epoch's last iteration
    lr: float = 0.0
    logits: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    finite: Optional[torch.Tensor] = None   # device bool: loss (and, on a step, gradient norm) finite
    grad_norm: Optional[torch.Tensor] = None  # global norm before clipping (steps only)
    params: Optional[List[torch.Tensor]] = None  # the parameters with a gradient (steps only)
    skip: bool = False
    stop: Optional[str] = None


class Hook:
    """Base class: every method is a no-op. ``stats`` names the device-side statistics the hook
    adds to (saved by name in mid-epoch checkpoints); ``order`` sorts hooks (lower first)."""

    name: str = ""
    stats: Tuple[str, ...] = ()
    order: int = 0

    @classmethod
    def from_run(cls, run: Any) -> Optional["Hook"]:
        """The hook for this run (``run.cfg`` is the Config), or None when it is off. The default:
        on when the config's ``hooks:`` mapping names it, built with those options as keywords."""
        options = run.cfg.hooks.get(cls.name) if run.cfg.hooks else None
        return None if options is None else cls(**dict(options))

    def on_fit_start(self, run: Any) -> None:
        """Once, after setup (and resume), before the first epoch."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first iteration of an epoch or of a resumed part of one."""

    def before_forward(self, step: Step) -> None:
        """The batch is on the device; clips and loss targets may be replaced."""

    def after_backward(self, step: Step, stats: Any) -> None:
        """Gradients are unscaled (on a step) and ``step.grad_norm`` is set; ``step.skip`` may be set."""

    def after_step(self, step: Step, stats: Any) -> None:
        """The optimizer has stepped (not called for skipped iterations or accumulation)."""

    def after_iteration(self, step: Step, stats: Any) -> None:
        """Statistics are counted and logged; ``step.stop`` may be set (not on the last iteration)."""

    def on_read(self, values: Dict[str, float], record: Dict[str, Any]) -> None:
        """The statistics were read on the host (a log line, a stop); add fields to ``record`` or raise."""

    def on_epoch_end(self, totals: Dict[str, float], record: Dict[str, Any]) -> None:
        """Statistics summed over ranks; add fields to the epoch record or raise."""


HookType = TypeVar("HookType", bound=Type[Hook])
_HOOKS: Dict[str, Type[Hook]] = {}


def register_hook(name: str) -> Callable[[HookType], HookType]:
    """Class decorator: register a loop hook under ``name``."""

    def register(cls: HookType) -> HookType:
        if name in _HOOKS and _HOOKS[name] is not cls:
            raise ValueError(f"hook {name!r} is already registered (by {_HOOKS[name].__module__})")
        cls.name = name
        _HOOKS[name] = cls
        return cls

    return register


def list_hooks() -> List[str]:
    """Registered hook names (every module of this package is imported first)."""
    import_submodules("tcpnet.engine.hooks")
    return sorted(_HOOKS)


def build_hooks(run: Any) -> List[Hook]:
    """The hooks that are on for ``run``, sorted by ``order`` then name. A name under the config's
    ``hooks:`` that no hook is registered as is an error naming it (a typo would silently do nothing)."""
    names = list_hooks()
    unknown = sorted(set(run.cfg.hooks or {}) - set(names))
    if unknown:
        raise ValueError(f"hooks: {unknown} are not registered loop hooks; registered: {names} (a hook "
                         "from outside the package needs its module under imports:)")
    hooks = []
    for n in names:
        try:
            hook = _HOOKS[n].from_run(run)
        except TypeError as e:
            raise ValueError(f"hooks.{n}: {e}") from None
        if hook is not None:
            hooks.append(hook)
    return sorted(hooks, key=lambda h: (h.order, h.name))
