"""The frozen backbone's feature cache (``data.cache_features``): at the start of a run the caches
found in the directory (``train``, and ``val`` with a val list) are checked against this run
(backbone, T, input, weights, views, list; a mismatch stops the run before any work), and the first
epoch that finds one missing builds it, inside that epoch's time. Under DDP rank 0 builds while the
others wait."""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

import torch.distributed as dist

from tcpnet.config import model_name
from tcpnet.data.feature_cache import CachedMapsDataset, cache_key
from tcpnet.engine.feature_cache import build_feature_cache
from tcpnet.engine.hooks.base import Hook, register_hook
from tcpnet.models import unwrap_model

CACHED_SUBSETS = ("train", "val")


@register_hook("feature_cache")
class FeatureCache(Hook):
    """Checks (on fit start) and builds (on the first epoch start that needs them) the train and
    val caches."""

    order = -10

    def __init__(self, run: Any) -> None:
        self.run = run
        self.missing: List[str] = list(CACHED_SUBSETS)
        self.keys: Dict[str, Dict[str, Any]] = {}
        self.build_seconds = 0.0

    @classmethod
    def from_run(cls, run: Any) -> Optional["FeatureCache"]:
        return cls(run) if run.cfg.data.cache_features else None

    def _cached(self) -> Dict[str, CachedMapsDataset]:
        return {s: d for s, d in self.run.datasets.items() if s in CACHED_SUBSETS and isinstance(d, CachedMapsDataset)}

    def on_fit_start(self, run: Any) -> None:
        dc = run.cfg.data
        model = unwrap_model(run.state.model)  # the restored weights on a resume
        self.missing = []
        for subset, dataset in self._cached().items():
            self.keys[subset] = cache_key(dataset.views, model=model_name(run.cfg.model), backbone=model.backbone,
                                          dtype=dc.cache_dtype, flip=dc.flip)
            if run.is_main:
                dataset.store.remove_stale()
            if not dataset.store.check(self.keys[subset], rebuild=dc.cache_rebuild):
                self.missing.append(subset)

    def on_epoch_start(self, epoch: int) -> None:
        if not self.missing:
            return
        run = self.run
        datasets = self._cached()
        if run.is_main:
            for subset in self.missing:
                self.build_seconds += build_feature_cache(
                    unwrap_model(run.state.model), datasets[subset].views, datasets[subset].store, self.keys[subset],
                    device=run.device, amp=run.cfg.train.amp, batch_size=run.cfg.test.batch_size,
                    num_workers=run.cfg.data.num_workers, progress=sys.stderr.isatty())
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()
        self.missing = []

    def on_epoch_end(self, totals: Dict[str, float], record: Dict[str, Any]) -> None:
        record["cache_build_s"], self.build_seconds = self.build_seconds, 0.0
