"""Schedulers: one file per algorithm, everything the loop needs precomputed on the device."""

from .base import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
from .ddpm import DDPMScheduler, DDPMSchedulerOutput
from .ddim import DDIMScheduler, DDIMSchedulerOutput
from .pndm import PNDMScheduler

__all__ = [
    "KarrasDiffusionSchedulers",
    "SchedulerMixin",
    "SchedulerOutput",
    "DDPMScheduler",
    "DDPMSchedulerOutput",
    "DDIMScheduler",
    "DDIMSchedulerOutput",
    "PNDMScheduler",
]
