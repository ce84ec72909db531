"""The frozen backbone's feature cache (``data.cache_features``): at the start of a run the cache
found in the directory is checked against this run (backbone, T, input, weights, views, list;
a mismatch stops the run before any work), and the first epoch that finds it missing builds it,
inside that epoch's time. Under DDP rank 0 builds while the others wait."""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional

import torch.distributed as dist

from tcpnet.config import model_name
from tcpnet.data.feature_cache import cache_key
from tcpnet.engine.feature_cache import build_feature_cache
from tcpnet.engine.hooks.base import Hook, register_hook
from tcpnet.models import unwrap_model


@register_hook("feature_cache")
class FeatureCache(Hook):
    """Checks (on fit start) and builds (on the first epoch start that needs it) the train cache."""

    order = -10

    def __init__(self, run: Any) -> None:
        self.run = run
        self.ready = False
        self.key: Optional[Dict[str, Any]] = None
        self.build_seconds = 0.0

    @classmethod
    def from_run(cls, run: Any) -> Optional["FeatureCache"]:
        return cls(run) if run.cfg.data.cache_features else None

    def on_fit_start(self, run: Any) -> None:
        dc = run.cfg.data
        model = unwrap_model(run.state.model)  # the restored weights on a resume
        dataset = run.datasets["train"]
        self.key = cache_key(dataset.views, model=model_name(run.cfg.model), backbone=model.backbone,
                             dtype=dc.cache_dtype, flip=dc.flip)
        if run.is_main:
            dataset.store.remove_stale()
        self.ready = dataset.store.check(self.key, rebuild=dc.cache_rebuild)

    def on_epoch_start(self, epoch: int) -> None:
        if self.ready:
            return
        run = self.run
        dataset = run.datasets["train"]
        if run.is_main:
            self.build_seconds = build_feature_cache(
                unwrap_model(run.state.model), dataset.views, dataset.store, self.key, device=run.device,
                amp=run.cfg.train.amp, batch_size=run.cfg.test.batch_size, num_workers=run.cfg.data.num_workers,
                progress=sys.stderr.isatty())
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()
        self.ready = True

    def on_epoch_end(self, totals: Dict[str, float], record: Dict[str, Any]) -> None:
        record["cache_build_s"], self.build_seconds = self.build_seconds, 0.0
