"""Schedulers: one file per algorithm, everything the loop needs precomputed on the device."""

from .base import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
from .ddpm import DDPMScheduler, DDPMSchedulerOutput
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .dpmsolver_singlestep import DPMSolverSinglestepScheduler
from .unipc_multistep import UniPCMultistepScheduler
from .deis_multistep import DEISMultistepScheduler
from .lcm import LCMScheduler, LCMSchedulerOutput
from .ddim import DDIMScheduler, DDIMSchedulerOutput
from .pndm import PNDMScheduler
from .lms_discrete import LMSDiscreteScheduler, LMSDiscreteSchedulerOutput
from .euler_discrete import EulerDiscreteScheduler, EulerDiscreteSchedulerOutput
from .euler_ancestral_discrete import EulerAncestralDiscreteScheduler, EulerAncestralDiscreteSchedulerOutput
from .heun_discrete import HeunDiscreteScheduler, HeunDiscreteSchedulerOutput
from .k_dpm_2_discrete import KDPM2DiscreteScheduler, KDPM2DiscreteSchedulerOutput
from .k_dpm_2_ancestral_discrete import KDPM2AncestralDiscreteScheduler, KDPM2AncestralDiscreteSchedulerOutput
from .karras_ve import KarrasVeOutput, KarrasVeScheduler
from .score_sde_ve import ScoreSdeVeScheduler, SdeVeOutput
from .score_sde_vp import ScoreSdeVpScheduler

__all__ = [
    "KarrasDiffusionSchedulers",
    "SchedulerMixin",
    "SchedulerOutput",
    "DDPMScheduler",
    "DDPMSchedulerOutput",
    "DDIMScheduler",
    "DDIMSchedulerOutput",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "LMSDiscreteSchedulerOutput",
    "EulerDiscreteScheduler",
    "EulerDiscreteSchedulerOutput",
    "EulerAncestralDiscreteScheduler",
    "EulerAncestralDiscreteSchedulerOutput",
    "HeunDiscreteScheduler",
    "HeunDiscreteSchedulerOutput",
    "KDPM2DiscreteScheduler",
    "KDPM2DiscreteSchedulerOutput",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2AncestralDiscreteSchedulerOutput",
    "KarrasVeScheduler",
    "KarrasVeOutput",
    "ScoreSdeVeScheduler",
    "SdeVeOutput",
    "ScoreSdeVpScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "LCMScheduler",
    "LCMSchedulerOutput",
]
