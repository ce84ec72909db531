"""Mixup / CutMix on training batches (``train.mixup_alpha``, ``train.cutmix_alpha``): the loss
sees soft targets, accuracy keeps counting the hard labels."""
from __future__ import annotations

from typing import Any, Optional

from tcpnet.engine.hooks.base import Hook, Step, register_hook
from tcpnet.engine.mixup import MixupCutmix


@register_hook("mixup")
class Mixup(Hook):
    order = 10

    def __init__(self, mixer: MixupCutmix) -> None:
        self.mixer = mixer

    @classmethod
    def from_run(cls, run: Any) -> Optional["Mixup"]:
        tc = run.cfg.train
        if tc.mixup_alpha <= 0 and tc.cutmix_alpha <= 0:
            return None
        return cls(MixupCutmix(run.num_classes, tc.mixup_alpha, tc.cutmix_alpha))

    def before_forward(self, step: Step) -> None:
        step.clips, step.loss_targets = self.mixer(step.clips, step.targets)
