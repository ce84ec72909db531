"""Building the frozen backbone's feature cache (``data.cache_features``): every (video, view) clip
of :class:`~tcpnet.data.feature_cache.FixedViews` through the backbone once, into a
:class:`~tcpnet.data.feature_cache.FeatureStore`. Training (and validation, on the val split's
cached centre views) then runs the model's :class:`~tcpnet.models.HeadClassifier` on the stored maps."""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from tcpnet.data.feature_cache import FeatureStore, FixedViews, ViewClips
from tcpnet.engine.evaluate import autocast_context
from tcpnet.engine.preemption import ignore_stop_signals
from tcpnet.models import Recognizer

logger = logging.getLogger(__name__)

__all__ = ["build_feature_cache", "clip_maps"]


def clip_maps(model: Recognizer, clips: torch.Tensor, amp: Optional[str] = None) -> torch.Tensor:
    """The backbone's maps of a clip batch as the head receives them, grouped per clip:
    (B, 3, T, H, W) -> (B, T', C, h, w), float32, no gradient, backbone in eval mode."""
    model.backbone.eval()
    with torch.no_grad(), autocast_context(clips.device, amp):
        maps = model.backbone_maps(clips)
    return maps.float().reshape(clips.shape[0], model.head_segments(), *maps.shape[1:])


def build_feature_cache(model: Recognizer, views: FixedViews, store: FeatureStore, key: Dict[str, Any], *,
                        device: torch.device, amp: Optional[str] = None, batch_size: int = 8,
                        num_workers: int = 0, progress: bool = False) -> float:
    """Run every (video, view) clip through ``model``'s backbone and write the maps to ``store``
    atomically (see :meth:`FeatureStore.write`). Uses no global RNG (the loader has its own
    generator), so a training run's random streams are the same with or without the build.
    Returns the seconds it took."""
    t0 = time.time()
    loader = DataLoader(ViewClips(views), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0), worker_init_fn=ignore_stop_signals)
    batches = iter(loader)
    clips, items = next(batches)
    first = clip_maps(model, clips.to(device), amp)
    shape = (len(views), views.num_views, *first.shape[1:])
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(loader), desc="feature cache", dynamic_ncols=True)

    def fill(array: np.memmap) -> None:
        flat = array.reshape(-1, *shape[2:])
        flat[items.numpy()] = first.cpu().numpy().astype(array.dtype)
        if bar is not None:
            bar.update(1)
        for clips_b, items_b in batches:
            flat[items_b.numpy()] = clip_maps(model, clips_b.to(device), amp).cpu().numpy().astype(array.dtype)
            if bar is not None:
                bar.update(1)

    try:
        store.write(key, shape, fill)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.time() - t0
    size = np.prod(shape) * np.dtype(key["dtype"]).itemsize / 2**20
    logger.info("feature cache %s: %d videos x %d views of maps %s, %.1f MiB %s, built in %.1f s",
                store.data_path, shape[0], shape[1], tuple(shape[2:]), size, key["dtype"], seconds)
    return seconds
