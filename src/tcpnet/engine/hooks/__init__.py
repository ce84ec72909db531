"""Training-loop hooks: features that act at the loop's natural points (after forward, after
backward, after the optimizer step, end of epoch) without edits to the loop. A new feature is
one module in this package with ``@register_hook`` on its class (or, from outside the package,
a module named in the config's ``imports:``); :func:`build_hooks` finds and builds them."""
from tcpnet.engine.hooks.base import Hook, Step, build_hooks, list_hooks, register_hook

__all__ = ["Hook", "Step", "register_hook", "build_hooks", "list_hooks"]
