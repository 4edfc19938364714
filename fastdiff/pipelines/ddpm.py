"""Unconditional image generation with DDPM (Ho et al. 2020): noise -> UNet2DModel + DDPMScheduler -> image."""

from __future__ import annotations

import torch

from ..models import UNet2DModel
from ..noise import randn_tensor
from ..outputs import ImagePipelineOutput
from ..schedulers import DDPMScheduler
from .pipeline import DiffusionPipeline


class DDPMPipeline(DiffusionPipeline):
    """Ancestral sampling from an unconditional UNet2DModel.

    Example:
        >>> pipe = DDPMPipeline.from_pretrained("path/to/ddpm-cifar10-32")
        >>> image = pipe(num_inference_steps=1000, generator=torch.Generator().manual_seed(0)).images[0]
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 num_inference_steps: int = 1000, output_type: str | None = "pil", return_dict: bool = True):
        """Sample `batch_size` images; `output_type` "pil" or "np" (float32 NHWC in [0, 1])."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *size)
        device = self.device
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        image = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_output = self.unet(image, t).sample
            image = self.scheduler.step(model_output, t, image, generator=generator).prev_sample
        image = (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image) if return_dict else (image,)
