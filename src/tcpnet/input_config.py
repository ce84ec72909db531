"""What a model expects of its input clips: the data pipeline reads this instead of repeating it."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputConfig:
    """Input contract of a model, like timm's ``pretrained_cfg``.

    A uint8 pixel ``p`` becomes ``(p * value_scale - mean[c]) / std[c]``: ``value_scale`` is
    1/255 for ImageNet-normalised backbones and 1.0 for the pre-activation ResNet-152, which
    takes raw 0-255 values (its first layer is a learned input BN). ``scale_size`` is the shorter
    side used before the centre crop at validation time. ``num_segments`` is the model's T: a
    :class:`~tcpnet.models.Recognizer` keeps the one copy and derives it from its own T.

    ``sampler`` is how the T frames are picked from a video: ``"tsn"``, one per segment of the
    whole video; ``"dense"``, a clip of T frames ``frame_interval`` apart (None for TSN). A model
    trained on dense clips is tested and predicted on them too, so its checkpoint keeps both here.
    """

    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    value_scale: float = 1.0 / 255.0
    crop_size: int = 224
    scale_size: int = 256
    num_segments: int = 8
    sampler: str = "tsn"
    frame_interval: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        """Plain-dict form for JSON/YAML and checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "InputConfig":
        """The config a ``to_dict`` gave; the ``extra`` key of older checkpoints (always empty,
        never read) is dropped, and files written before ``sampler`` existed read as TSN."""
        d = dict(d)
        d.pop("extra", None)
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**d)


RAW_PIXELS = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), value_scale=1.0)
