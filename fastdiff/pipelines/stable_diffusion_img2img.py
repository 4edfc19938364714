"""Stable Diffusion image-to-image (SDEdit, Meng et al. 2022): noise the image to strength·T, then denoise."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from ..noise import randn_tensor
from .stable_diffusion import StableDiffusionMixin, StableDiffusionPipelineOutput, _call_parameters, _deprecated_call_kwargs


class StableDiffusionImg2ImgPipeline(StableDiffusionMixin):
    """Image-to-image: the first latents are the encoded image, noised to the first kept timestep.

    Example:
        >>> pipe = StableDiffusionImg2ImgPipeline.from_pretrained("path/to/sd")
        >>> image = pipe("a red circle", image=init_image, strength=0.75).images[0]
    """

    def check_inputs(self, prompt, strength, callback_steps=None, negative_prompt=None, prompt_embeds=None,
                     negative_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                     callback_on_step_end_tensor_inputs=None, num_inference_steps: int = 50, guidance_scale: float = 7.5):
        if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ValueError(f"The value of strength should in [0.0, 1.0] but is {strength}")
        self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps,
                           guidance_scale, callback_on_step_end_tensor_inputs)
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            raise NotImplementedError("IP-Adapter inputs are not supported by fastdiff yet.")

    def prepare_latents(self, image, timestep, batch_size, num_images_per_prompt, dtype, device, generator=None):
        """x_t = √ᾱ_t z + √(1-ᾱ_t) ε with z the image latents (a 4-channel image is taken as latents)."""
        image = image.to(device=device, dtype=dtype)
        batch_size = batch_size * num_images_per_prompt
        if image.shape[1] == 4:
            init_latents = image
        else:
            self._check_generator(generator, batch_size)
            if isinstance(generator, list) and image.shape[0] < batch_size:
                image = _repeat_batch(image, batch_size, "image")
            init_latents = self._encode_vae_image(image, generator)
        if batch_size > init_latents.shape[0]:
            warnings.warn("Duplicating initial images to match the number of prompts is deprecated; pass as many "
                          "images as prompts.", FutureWarning, stacklevel=2)
            init_latents = _repeat_batch(init_latents, batch_size, "image")
        noise = randn_tensor(init_latents.shape, generator=generator, device=device, dtype=dtype)
        return self.scheduler.add_noise(init_latents, noise, timestep)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] = None, image=None, strength: float = 0.8,
                 num_inference_steps: int | None = 50, timesteps: list[int] = None, sigmas: list[float] = None,
                 guidance_scale: float | None = 7.5, negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int | None = 1, eta: float | None = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 ip_adapter_image=None, ip_adapter_image_embeds: list[torch.Tensor] | None = None,
                 output_type: str | None = "pil", return_dict: bool = True,
                 cross_attention_kwargs: dict[str, Any] | None = None, clip_skip: int = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        callback, callback_steps = _deprecated_call_kwargs(kwargs, _call_parameters(type(self).__call__))
        self.check_inputs(prompt, strength, None, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          ip_adapter_image, ip_adapter_image_embeds,
                          getattr(callback_on_step_end, "tensor_inputs", callback_on_step_end_tensor_inputs),
                          num_inference_steps if timesteps is None and sigmas is None else 1, guidance_scale)
        if image is None:
            raise ValueError("`image` must be given for image-to-image.")
        batch_size = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
        self._check_generator(generator, batch_size)
        image = self.image_processor.preprocess(image)
        _check_divides(image.shape[0], batch_size, "image")
        self._begin_call(guidance_scale, 0.0, clip_skip, cross_attention_kwargs)
        device = self._execution_device
        timesteps, num_inference_steps = self._strength_timesteps(strength, num_inference_steps, timesteps, sigmas, device)

        state = self._encode_for_loop(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, device,
                                      num_images_per_prompt)
        state["latents"] = self.prepare_latents(image, timesteps[:1].repeat(batch_size), batch_size // num_images_per_prompt,
                                                num_images_per_prompt, state["prompt_embeds"].dtype, device, generator)
        latents = self._run_loop(state, timesteps, num_inference_steps, generator, eta, batch_size,
                                 self._callbacks(callback_on_step_end, callback_on_step_end_tensor_inputs, callback, callback_steps))
        image, nsfw = self._decode(latents, output_type, generator, state["prompt_embeds"].dtype)
        if not return_dict:
            return (image, nsfw)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)


def _check_divides(n: int, batch_size: int, what: str):
    if n > batch_size or batch_size % n:
        raise ValueError(f"Cannot duplicate `{what}` of batch size {n} to the effective batch size {batch_size}.")


def _repeat_batch(x: torch.Tensor, batch_size: int, what: str) -> torch.Tensor:
    _check_divides(x.shape[0], batch_size, what)
    return torch.cat([x] * (batch_size // x.shape[0]), dim=0)
