"""Shared pieces of every backbone: the ``num_segments``/``input_config`` attributes and the
published initialisation (Kaiming-normal fan_out convs, BN weight 1 / bias 0, SPEC §2.1)."""
from __future__ import annotations

import dataclasses

from torch import nn

from tcpnet.backbones.tsm import set_num_segments
from tcpnet.input_config import InputConfig


class VideoBackbone(nn.Module):
    """A 2-D network over a video-major frame batch ``(N*T, 3, H, W) -> (N*T, C, h, w)``.

    Subclasses set ``num_features`` and ``input_config``. Assigning ``num_segments`` updates
    every temporal submodule and ``input_config.num_segments``, so one backbone can be reused
    for another clip length (weights do not depend on T).
    """

    num_features: int
    input_config: InputConfig

    @property
    def num_segments(self) -> int:
        return self._num_segments

    @num_segments.setter
    def num_segments(self, value: int) -> None:
        value = int(value)
        set_num_segments(self, value)  # validates value >= 1
        self._num_segments = value
        cfg = getattr(self, "input_config", None)
        if cfg is not None and cfg.num_segments != value:
            self.input_config = dataclasses.replace(cfg, num_segments=value)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal(fan_out) on every Conv2d (std sqrt(2/fan_out), groups ignored as in
    PyTorch), weight 1 / bias 0 on every BatchNorm2d. Conv1d (TEA shifts) is left alone."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
