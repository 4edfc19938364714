"""fastdiff: the Diffusers pipeline API on fused Triton kernels.

    >>> from fastdiff import DiffusionPipeline
    >>> pipe = DiffusionPipeline.from_pretrained("path/or/hub-id").to("cuda")
    >>> image = pipe("a red circle on a blue background").images[0]
"""

__version__ = "0.1.0"

from . import ops
from .configuration import ConfigMixin, FrozenDict, register_to_config
from .models import *  # noqa: F401,F403
from .outputs import AudioPipelineOutput, BaseOutput, ImagePipelineOutput
from .pipelines import *  # noqa: F401,F403
from .schedulers import *  # noqa: F401,F403
