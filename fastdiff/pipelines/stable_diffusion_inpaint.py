"""Stable Diffusion inpainting: repaint the masked region (white = repaint), keep the rest.

9-channel inpainting UNets see [x_t, mask, masked-image latents] at every step; 4-channel UNets
are plain SD UNets, and after every step the known region is put back, noised to the next timestep.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import PIL.Image
import torch
import torch.nn.functional as F

from ..noise import randn_tensor
from .image_processor import VaeImageProcessor
from .stable_diffusion import StableDiffusionMixin, StableDiffusionPipelineOutput, _call_parameters, _deprecated_call_kwargs
from .stable_diffusion_img2img import _check_divides


class StableDiffusionInpaintPipeline(StableDiffusionMixin):
    """Inpainting with 9-channel inpainting UNets or 4-channel text-to-image UNets.

    Example:
        >>> pipe = StableDiffusionInpaintPipeline.from_pretrained("path/to/sd-inpainting")
        >>> image = pipe("a red circle", image=photo, mask_image=mask).images[0]
    """

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents"]
    _scheduler_fixes = (("steps_offset", lambda v: v != 1, 1), ("skip_prk_steps", lambda v: v is False, True))

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                 image_encoder=None, requires_safety_checker: bool = True):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self.mask_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False,
                                                do_binarize=True, do_convert_grayscale=True)

    def check_inputs(self, prompt, image, mask_image, height, width, strength, callback_steps=None, output_type="pil",
                     negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None, ip_adapter_image=None,
                     ip_adapter_image_embeds=None, callback_on_step_end_tensor_inputs=None, padding_mask_crop=None,
                     num_inference_steps: int = 50, guidance_scale: float = 7.5):
        if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ValueError(f"The value of strength should in [0.0, 1.0] but is {strength}")
        self._check_size(height, width, math.lcm(8, self.vae_scale_factor))
        self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps,
                           guidance_scale, callback_on_step_end_tensor_inputs)
        if image is None or mask_image is None:
            raise ValueError("Inpainting needs both `image` and `mask_image`.")
        if padding_mask_crop is not None:
            for name, value in (("image", image), ("mask image", mask_image)):
                if not isinstance(value, PIL.Image.Image):
                    raise ValueError(f"The {name} should be a PIL image when inpainting mask crop, but is of type {type(value)}.")
            if output_type != "pil":
                raise ValueError(f"The output type should be PIL when inpainting mask crop, but is {output_type}.")
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            raise NotImplementedError("IP-Adapter inputs are not supported by fastdiff yet.")
        if self.unet.config.in_channels not in (4, 9):
            raise ValueError(f"The unet {type(self.unet)} should have either 4 or 9 input channels, not {self.unet.config.in_channels}.")

    def prepare_latents(self, batch_size, num_channels_latents, height, width, dtype, device, generator, latents=None,
                        image=None, timestep=None, is_strength_max=True, return_noise=False, return_image_latents=False):
        """Pure noise at strength 1, else the noised image latents; also the noise and image latents."""
        shape = (batch_size, num_channels_latents, int(height) // self.vae_scale_factor, int(width) // self.vae_scale_factor)
        self._check_generator(generator, batch_size)
        image_latents = None
        if return_image_latents or (latents is None and not is_strength_max):
            image = image.to(device=device, dtype=dtype)
            image_latents = image if image.shape[1] == 4 else self._encode_vae_image(image, generator)
            image_latents = image_latents.repeat(batch_size // image_latents.shape[0], 1, 1, 1)
        if latents is None:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            if is_strength_max:
                latents = noise * self.scheduler.init_noise_sigma
            else:
                latents = self.scheduler.add_noise(image_latents, noise, timestep)
        else:
            noise = latents.to(device)
            latents = noise * self.scheduler.init_noise_sigma
        outputs = (latents,) + ((noise,) if return_noise else ()) + ((image_latents,) if return_image_latents else ())
        return outputs

    def prepare_mask_latents(self, mask, masked_image, batch_size, height, width, dtype, device, generator,
                             do_classifier_free_guidance):
        """The mask at latent resolution and the masked image's latents, batched (×2 under guidance)."""
        f = self.vae_scale_factor
        mask = F.interpolate(mask, size=(height // f, width // f)).to(device=device, dtype=dtype)
        masked_image = masked_image.to(device=device, dtype=dtype)
        masked = masked_image if masked_image.shape[1] == 4 else self._encode_vae_image(masked_image, generator)
        _check_divides(mask.shape[0], batch_size, "mask_image")
        _check_divides(masked.shape[0], batch_size, "image")
        mask = mask.repeat(batch_size // mask.shape[0], 1, 1, 1)
        masked = masked.repeat(batch_size // masked.shape[0], 1, 1, 1)
        if do_classifier_free_guidance:
            mask, masked = torch.cat([mask] * 2), torch.cat([masked] * 2)
        return mask, masked.to(device=device, dtype=dtype)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] = None, image=None, mask_image=None, masked_image_latents: torch.Tensor = None,
                 height: int | None = None, width: int | None = None, padding_mask_crop: int | None = None,
                 strength: float = 1.0, num_inference_steps: int = 50, timesteps: list[int] = None,
                 sigmas: list[float] = None, guidance_scale: float = 7.5, negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int | None = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 ip_adapter_image=None, ip_adapter_image_embeds: list[torch.Tensor] | None = None,
                 output_type: str | None = "pil", return_dict: bool = True,
                 cross_attention_kwargs: dict[str, Any] | None = None, clip_skip: int = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        callback, callback_steps = _deprecated_call_kwargs(kwargs, _call_parameters(type(self).__call__))
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else size
        height = size[0] * self.vae_scale_factor if height is None else height
        width = size[1] * self.vae_scale_factor if width is None else width
        self.check_inputs(prompt, image, mask_image, height, width, strength, None, output_type, negative_prompt,
                          prompt_embeds, negative_prompt_embeds, ip_adapter_image, ip_adapter_image_embeds,
                          getattr(callback_on_step_end, "tensor_inputs", callback_on_step_end_tensor_inputs),
                          padding_mask_crop, num_inference_steps if timesteps is None and sigmas is None else 1,
                          guidance_scale)
        batch_size = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
        self._check_generator(generator, batch_size)
        latent_shape = (batch_size, self.vae.config.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is not None and tuple(latents.shape) != latent_shape:
            raise ValueError(f"`latents` must have shape {latent_shape}, got {tuple(latents.shape)}")
        crops = self.mask_processor.get_crop_region(mask_image, width, height, pad=padding_mask_crop) if padding_mask_crop is not None else None
        resize_mode = "fill" if crops is not None else "default"
        init_image = self.image_processor.preprocess(image, height=height, width=width, crops_coords=crops,
                                                     resize_mode=resize_mode).to(dtype=torch.float32)
        mask_condition = self.mask_processor.preprocess(mask_image, height=height, width=width, resize_mode=resize_mode,
                                                        crops_coords=crops)
        _check_divides(init_image.shape[0], batch_size, "image")
        _check_divides(mask_condition.shape[0], batch_size, "mask_image")
        self._begin_call(guidance_scale, 0.0, clip_skip, cross_attention_kwargs)
        device = self._execution_device
        timesteps, num_inference_steps = self._strength_timesteps(strength, num_inference_steps, timesteps, sigmas, device)

        state = self._encode_for_loop(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, device,
                                      num_images_per_prompt)
        dtype, four_channels = state["prompt_embeds"].dtype, self.unet.config.in_channels == 4
        prepared = self.prepare_latents(batch_size, self.vae.config.latent_channels, height, width, dtype, device,
                                        generator, latents, image=init_image, timestep=timesteps[:1].repeat(batch_size),
                                        is_strength_max=strength == 1.0, return_noise=True, return_image_latents=four_channels)
        state["latents"], state["noise"] = prepared[0], prepared[1]
        if four_channels:
            state["image_latents"] = prepared[2]
        masked_image = init_image * (mask_condition < 0.5) if masked_image_latents is None else masked_image_latents
        state["mask"], state["masked_image_latents"] = self.prepare_mask_latents(
            mask_condition, masked_image, batch_size, height, width, dtype, device, generator,
            self.do_classifier_free_guidance)
        self._check_channels(state)
        latents = self._run_loop(state, timesteps, num_inference_steps, generator, eta, batch_size,
                                 self._callbacks(callback_on_step_end, callback_on_step_end_tensor_inputs, callback, callback_steps))
        original_image = image
        image, nsfw = self._decode(latents, output_type, generator, dtype)
        if crops is not None:
            image = [self.image_processor.apply_overlay(mask_image, original_image, out, crops) for out in image]
        if not return_dict:
            return (image, nsfw)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)

    def _check_channels(self, state):
        if self.unet.config.in_channels != 9:
            return
        total = state["latents"].shape[1] + state["mask"].shape[1] + state["masked_image_latents"].shape[1]
        if total != 9:
            raise ValueError(f"Incorrect configuration settings! The unet expects 9 input channels but received {total} "
                             "(latents + mask + masked image latents). Check `mask_image` and `image`.")
