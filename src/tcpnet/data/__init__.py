"""Video data: readers, sampling, transforms, list formats, datasets, synthetic data, tools."""
# No `from __future__ import annotations` here: it would bind the name `annotations`, which
# must stay the sub-module `tcpnet.data.annotations`.
import importlib
from typing import Any

# Lazy re-exports: name -> defining module (keeps `import tcpnet.data` cheap and lets the
# sub-modules load independently).
_LAZY = {
    "load_clip": "tcpnet.data.clip",
    "probe": "tcpnet.data.clip",
    "VideoInfo": "tcpnet.data.clip",
    "DecodeError": "tcpnet.data.clip",
    "FrameIndexError": "tcpnet.data.clip",
    "make_synthetic_dataset": "tcpnet.data.synthetic",
    "FrameSampler": "tcpnet.data.samplers",
    "TSNTrainSampler": "tcpnet.data.samplers",
    "TSNValSampler": "tcpnet.data.samplers",
    "TSNTestSampler": "tcpnet.data.samplers",
    "TwiceSampler": "tcpnet.data.samplers",
    "DenseSampler": "tcpnet.data.samplers",
    "build_sampler": "tcpnet.data.samplers",
    "ClipTransform": "tcpnet.data.transforms",
    "Compose": "tcpnet.data.transforms",
    "resize": "tcpnet.data.transforms",
    "ResizeShorterSide": "tcpnet.data.transforms",
    "CenterCrop": "tcpnet.data.transforms",
    "MultiScaleCrop": "tcpnet.data.transforms",
    "RandomHorizontalFlip": "tcpnet.data.transforms",
    "ThreeCrop": "tcpnet.data.transforms",
    "FiveCrop": "tcpnet.data.transforms",
    "TenCrop": "tcpnet.data.transforms",
    "Normalize": "tcpnet.data.transforms",
    "to_float": "tcpnet.data.transforms",
    "normalize": "tcpnet.data.transforms",
    "to_views": "tcpnet.data.transforms",
    "fixed_crop_offsets": "tcpnet.data.transforms",
    "multiscale_crop_sizes": "tcpnet.data.transforms",
    "parse_views": "tcpnet.data.transforms",
    "build_transform": "tcpnet.data.transforms",
    "VideoRecord": "tcpnet.data.annotations",
    "RecordList": "tcpnet.data.annotations",
    "read_frame_list": "tcpnet.data.annotations",
    "read_video_list": "tcpnet.data.annotations",
    "read_class_names": "tcpnet.data.annotations",
    "read_class_folders": "tcpnet.data.annotations",
    "read_something_v1_labels": "tcpnet.data.annotations",
    "read_something_v1": "tcpnet.data.annotations",
    "read_charades": "tcpnet.data.annotations",
    "read_hmdb51_split": "tcpnet.data.annotations",
    "read_ucf101_class_ind": "tcpnet.data.annotations",
    "read_ucf101_split": "tcpnet.data.annotations",
    "multi_hot": "tcpnet.data.annotations",
    "check_records": "tcpnet.data.annotations",
    "VideoDataset": "tcpnet.data.dataset",
    "BadItem": "tcpnet.data.dataset",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tcpnet.data' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
