"""Video data: readers, sampling, transforms, list formats, datasets and their assembly."""

import importlib
from typing import Any

# Lazy re-exports: name -> defining module (keeps `import tcpnet.data` cheap and lets the
# sub-modules load independently).
_LAZY = {
    "load_clip": "tcpnet.data.clip",
    "probe": "tcpnet.data.clip",
    "VideoInfo": "tcpnet.data.records",
    "DecodeError": "tcpnet.data.errors",
    "DecodeTimeout": "tcpnet.data.errors",
    "FrameIndexError": "tcpnet.data.errors",
    "FrameSampler": "tcpnet.data.samplers",
    "TSNTrainSampler": "tcpnet.data.samplers",
    "TSNValSampler": "tcpnet.data.samplers",
    "TSNTestSampler": "tcpnet.data.samplers",
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
    "VideoRecord": "tcpnet.data.records",
    "RecordList": "tcpnet.data.records",
    "VIDEO_EXTENSIONS": "tcpnet.data.list_parsers",
    "read_frame_list": "tcpnet.data.list_parsers",
    "read_video_list": "tcpnet.data.list_parsers",
    "read_class_names": "tcpnet.data.list_parsers",
    "read_class_folders": "tcpnet.data.list_parsers",
    "read_something_v1_labels": "tcpnet.data.list_parsers",
    "read_something_v1": "tcpnet.data.list_parsers",
    "read_charades": "tcpnet.data.list_parsers",
    "read_hmdb51_split": "tcpnet.data.list_parsers",
    "read_ucf101_class_ind": "tcpnet.data.list_parsers",
    "read_ucf101_split": "tcpnet.data.list_parsers",
    "multi_hot": "tcpnet.data.list_parsers",
    "check_records": "tcpnet.data.list_parsers",
    "VideoDataset": "tcpnet.data.dataset",
    "BadItem": "tcpnet.data.dataset",
    "ListSource": "tcpnet.data.formats",
    "register_list_format": "tcpnet.data.formats",
    "list_formats": "tcpnet.data.formats",
    "check_data_config": "tcpnet.data.build",
    "read_lists": "tcpnet.data.build",
    "build_datasets": "tcpnet.data.build",
    "build_test_dataset": "tcpnet.data.build",
    "resolve_input_config": "tcpnet.data.build",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tcpnet.data' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
