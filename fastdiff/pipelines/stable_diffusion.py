"""Stable Diffusion (Rombach et al. 2022) text-to-image, and what its three task pipelines share.

`StableDiffusionMixin` holds the shared steps (prompt encoding, input checks, latents, decoding,
the safety checker); each task's `__call__` reads like the algorithm: check inputs, encode,
prepare latents, denoise (the one shared loop in denoise.py), decode, post-process.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch

from ..configuration import FrozenDict
from ..noise import randn_tensor
from ..outputs import BaseOutput
from .denoise import denoise, extra_step_kwargs, guidance_scale_embedding, retrieve_timesteps
from .image_processor import VaeImageProcessor
from .pipeline import DiffusionPipeline

logger = logging.getLogger(__name__)


@dataclass
class StableDiffusionPipelineOutput(BaseOutput):
    """images: PIL list or array; nsfw_content_detected: one flag per image, or None without a checker."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None


def _deprecated_call_kwargs(kwargs: dict, allowed: set[str]) -> tuple[Callable | None, int | None]:
    """Pop the deprecated `callback`/`callback_steps`; any other unknown keyword is a TypeError."""
    callback, callback_steps = kwargs.pop("callback", None), kwargs.pop("callback_steps", None)
    for name, value in (("callback", callback), ("callback_steps", callback_steps)):
        if value is not None:
            warnings.warn(f"`{name}` is deprecated; use `callback_on_step_end`.", FutureWarning, stacklevel=3)
    for name in kwargs:
        close = difflib.get_close_matches(name, sorted(allowed), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"__call__() got an unexpected keyword argument {name!r}{hint}")
    if callback_steps is not None and (not isinstance(callback_steps, int) or callback_steps <= 0):
        raise ValueError(f"`callback_steps` has to be a positive integer but is {callback_steps} of type {type(callback_steps)}.")
    return callback, callback_steps or 1


class StableDiffusionMixin(DiffusionPipeline):
    """Shared by StableDiffusion{,Img2Img,Inpaint}Pipeline."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    # Diffusers rewrites outdated scheduler configs on construction: (key, is outdated, new value)
    _scheduler_fixes = (("steps_offset", lambda v: v != 1, 1), ("clip_sample", lambda v: v is True, False))

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                 image_encoder=None, requires_safety_checker: bool = True):
        super().__init__()
        self._fix_outdated_configs(scheduler, unet)
        if safety_checker is None and requires_safety_checker:
            logger.warning(f"You have disabled the safety checker for {type(self).__name__} by passing `safety_checker=None`.")
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("Make sure to define a feature extractor when loading a pipeline with a safety checker, "
                             "or pass `safety_checker=None`.")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              safety_checker=safety_checker, feature_extractor=feature_extractor,
                              image_encoder=image_encoder)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.register_to_config(requires_safety_checker=requires_safety_checker)

    def _fix_outdated_configs(self, scheduler, unet):
        for key, outdated, value in self._scheduler_fixes:
            if scheduler is not None and key in scheduler.config and outdated(scheduler.config[key]):
                warnings.warn(f"The scheduler config sets {key}={scheduler.config[key]!r}; using {value!r} as "
                              "Diffusers does for Stable Diffusion.", FutureWarning, stacklevel=3)
                scheduler._internal_dict = FrozenDict({**scheduler.config, key: value})
        version = str((unet.config.get("_diffusers_version") if unet is not None else None) or "1.0")
        old = tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < (0, 9)
        size = unet.config.get("sample_size") if unet is not None else None
        if old and isinstance(size, int) and size < 64:
            unet._internal_dict = FrozenDict({**unet.config, "sample_size": 64})

    # ---- properties read by callbacks -----------------------------------------------------------

    guidance_scale = property(lambda self: self._guidance_scale)
    guidance_rescale = property(lambda self: getattr(self, "_guidance_rescale", 0.0))
    clip_skip = property(lambda self: self._clip_skip)
    cross_attention_kwargs = property(lambda self: self._cross_attention_kwargs)
    num_timesteps = property(lambda self: self._num_timesteps)
    interrupt = property(lambda self: self._interrupt)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None

    # ---- checks -----------------------------------------------------------------------------------

    def _check_common(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps,
                      guidance_scale, callback_on_step_end_tensor_inputs):
        """Checks all three tasks share; everything that can fail fails here, before any model runs."""
        tensor_inputs = callback_on_step_end_tensor_inputs or []
        unknown = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, but found {unknown}")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Cannot forward both `prompt` and `prompt_embeds`. Please make sure to only forward one of the two.")
        if prompt is None and prompt_embeds is None:
            raise ValueError("Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and `prompt_embeds` undefined.")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
        if isinstance(prompt, list) and (not prompt or not all(isinstance(p, str) for p in prompt)):
            raise ValueError(f"`prompt` must be a non-empty list of strings, got {prompt!r}")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Cannot forward both `negative_prompt` and `negative_prompt_embeds`. Please make sure to only forward one of the two.")
        if prompt_embeds is not None and negative_prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError("`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                             f" got: `prompt_embeds` {prompt_embeds.shape} != `negative_prompt_embeds` {negative_prompt_embeds.shape}.")
        self._check_negative_prompt(prompt, negative_prompt)
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive int, got {num_inference_steps!r}")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
            raise ValueError(f"`guidance_scale` must be a finite number, got {guidance_scale!r}")

    @staticmethod
    def _check_negative_prompt(prompt, negative_prompt):
        if negative_prompt is None or prompt is None:
            return
        if type(prompt) is not type(negative_prompt):
            raise TypeError(f"`negative_prompt` should be the same type to `prompt`, but got {type(negative_prompt)} != {type(prompt)}.")
        if isinstance(prompt, list) and len(negative_prompt) != len(prompt):
            raise ValueError(f"`negative_prompt`: {negative_prompt} has batch size {len(negative_prompt)}, but `prompt`: {prompt}"
                             f" has batch size {len(prompt)}. Please make sure that passed `negative_prompt` matches the batch size of `prompt`.")

    @staticmethod
    def _check_size(height, width, multiple: int = 8):
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(f"`height` and `width` have to be divisible by {multiple} but are {height} and {width}.")

    @staticmethod
    def _check_generator(generator, batch_size: int):
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"You have passed a list of generators of length {len(generator)}, but requested an effective batch"
                             f" size of {batch_size}. Make sure the batch size matches the length of the generators.")

    @staticmethod
    def _batch_size(prompt, prompt_embeds) -> int:
        return 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]

    def _begin_call(self, guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs):
        self._guidance_scale, self._guidance_rescale = guidance_scale, guidance_rescale
        self._clip_skip, self._cross_attention_kwargs, self._interrupt = clip_skip, cross_attention_kwargs, False

    # ---- text ---------------------------------------------------------------------------------------

    def _embed(self, text: list[str], device, clip_skip: int | None = None, max_length: int | None = None):
        tok = self.tokenizer
        ids = tok(text, padding="max_length", max_length=max_length or tok.model_max_length, truncation=True,
                  return_tensors="pt")
        full = tok(text, padding="longest", return_tensors="pt").input_ids
        if max_length is None and full.shape[-1] >= ids.input_ids.shape[-1] and not torch.equal(ids.input_ids, full):
            removed = tok.batch_decode(full[:, tok.model_max_length - 1 : -1])
            logger.warning(f"The following part of your input was truncated because CLIP can only handle sequences up to {tok.model_max_length} tokens: {removed}")
        mask = ids.attention_mask.to(device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        if clip_skip is None:
            return self.text_encoder(ids.input_ids.to(device), attention_mask=mask)[0]
        hidden = self.text_encoder(ids.input_ids.to(device), attention_mask=mask, output_hidden_states=True)[-1]
        final_norm = getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm  # transformers 4 vs 5
        return final_norm(hidden[-(clip_skip + 1)])

    def encode_prompt(self, prompt, device, num_images_per_prompt: int, do_classifier_free_guidance: bool,
                      negative_prompt=None, prompt_embeds: torch.Tensor | None = None,
                      negative_prompt_embeds: torch.Tensor | None = None, lora_scale: float | None = None,
                      clip_skip: int | None = None):
        """(prompt_embeds, negative_prompt_embeds), each repeated `num_images_per_prompt` times."""
        self._check_negative_prompt(prompt, negative_prompt)
        batch_size = self._batch_size(prompt, prompt_embeds)
        if prompt_embeds is None:
            prompt_embeds = self._embed([prompt] if isinstance(prompt, str) else prompt, device, clip_skip)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = _repeat(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            uncond = [""] * batch_size if negative_prompt is None else (
                [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt)
            negative_prompt_embeds = self._embed(uncond, device, max_length=prompt_embeds.shape[1])
        if do_classifier_free_guidance:
            negative_prompt_embeds = _repeat(negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
        return prompt_embeds, negative_prompt_embeds

    def _encode_for_loop(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, device,
                         num_images_per_prompt) -> dict[str, torch.Tensor]:
        """The loop's text state: prompt_embeds is [negative, positive] under classifier-free guidance."""
        lora_scale = (self.cross_attention_kwargs or {}).get("scale")
        pos, neg = self.encode_prompt(prompt, device, num_images_per_prompt, self.do_classifier_free_guidance,
                                      negative_prompt, prompt_embeds, negative_prompt_embeds, lora_scale, self.clip_skip)
        both = torch.cat([neg, pos]) if self.do_classifier_free_guidance else pos
        return {"prompt_embeds": both, "negative_prompt_embeds": neg}

    def _timestep_cond(self, batch_size: int, device, dtype):
        dim = self.unet.config.time_cond_proj_dim
        if dim is None:
            return None
        w = torch.tensor(self.guidance_scale - 1).repeat(batch_size)
        return guidance_scale_embedding(w, embedding_dim=dim).to(device=device, dtype=dtype)

    # ---- image-conditioned tasks (strength, VAE encoding) ----------------------------------------

    def get_timesteps(self, num_inference_steps: int, strength: float, device=None):
        """Skip the first (1 - strength) of the schedule: the loop starts from a noised image."""
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)
        timesteps = self.scheduler.timesteps[t_start * self.scheduler.order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start * self.scheduler.order)
        return timesteps, num_inference_steps - t_start

    def _strength_timesteps(self, strength, num_inference_steps, timesteps, sigmas, device):
        """Set the schedule, then cut it by strength; an empty loop is an error before any model runs."""
        if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ValueError(f"The value of strength should in [0.0, 1.0] but is {strength}")
        timesteps, n = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        timesteps, n = self.get_timesteps(n, strength, device)
        if n < 1:
            raise ValueError(f"After adjusting the num_inference_steps by strength parameter: {strength}, the number of "
                             f"pipeline steps is {n} which is < 1 and not appropriate for this pipeline.")
        return timesteps, n

    def _encode_vae_image(self, image: torch.Tensor, generator) -> torch.Tensor:
        """z = scaling_factor · (a sample of) E(image); a generator list draws row by row."""
        if isinstance(generator, list):
            latents = torch.cat([_latents_of(self.vae.encode(image[i : i + 1]), generator[i]) for i in range(image.shape[0])])
        else:
            latents = _latents_of(self.vae.encode(image), generator)
        return self.vae.config.scaling_factor * latents

    # ---- loop and output ------------------------------------------------------------------------------

    def _run_loop(self, state, timesteps, num_inference_steps, generator, eta, batch_size, callbacks):
        return denoise(self, state, timesteps, num_inference_steps, extra_step_kwargs(self.scheduler, generator, eta),
                       self._timestep_cond(batch_size, state["latents"].device, state["latents"].dtype), **callbacks)

    def _decode(self, latents, output_type, generator, dtype):
        if output_type == "latent":
            image, nsfw = latents, None
        else:
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
            image, nsfw = self.run_safety_checker(image, latents.device, dtype)
        denormalize = [True] * image.shape[0] if nsfw is None else [not flag for flag in nsfw]
        image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)
        return image, nsfw

    def run_safety_checker(self, image, device, dtype):
        if self.safety_checker is None:
            return image, None
        pil = self.image_processor.postprocess(image, output_type="pil") if torch.is_tensor(image) else self.image_processor.numpy_to_pil(image)
        clip_input = self.feature_extractor(pil, return_tensors="pt").to(device).pixel_values.to(dtype)
        return self.safety_checker(images=image, clip_input=clip_input)

    @staticmethod
    def _callbacks(callback_on_step_end, tensor_inputs, callback, callback_steps) -> dict[str, Any]:
        tensor_inputs = getattr(callback_on_step_end, "tensor_inputs", tensor_inputs)
        return dict(callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=tensor_inputs,
                    callback=callback, callback_steps=callback_steps)

    # ---- memory options -------------------------------------------------------------------------------

    def enable_attention_slicing(self, slice_size: str | int | None = "auto"):
        """Accepted for compatibility: fastdiff's attention never materialises the full score matrix."""
        logger.info("enable_attention_slicing: fastdiff's attention is already memory-efficient; nothing to slice.")

    def disable_attention_slicing(self):
        self.enable_attention_slicing(None)

    def enable_xformers_memory_efficient_attention(self, attention_op: Callable | None = None):
        """Accepted for compatibility: attention already runs fastdiff's fused kernel (no xformers needed)."""
        logger.info("xformers is not used: fastdiff's fused attention is always on.")

    def disable_xformers_memory_efficient_attention(self):
        pass

    def _vae_shim(self, name: str):
        warnings.warn(f"pipe.{name}() is deprecated (removed in Diffusers 0.42); call pipe.vae.{name.replace('_vae', '')}().",
                      FutureWarning, stacklevel=3)
        getattr(self.vae, name.replace("_vae", ""))()

    enable_vae_slicing = lambda self: self._vae_shim("enable_vae_slicing")  # noqa: E731
    disable_vae_slicing = lambda self: self._vae_shim("disable_vae_slicing")  # noqa: E731
    enable_vae_tiling = lambda self: self._vae_shim("enable_vae_tiling")  # noqa: E731
    disable_vae_tiling = lambda self: self._vae_shim("disable_vae_tiling")  # noqa: E731


def _latents_of(encoder_output, generator, sample_mode: str = "sample") -> torch.Tensor:
    """Latents from a VAE encoder output: a sample (or the mode) of its distribution, or VQ latents."""
    if hasattr(encoder_output, "latent_dist"):
        dist = encoder_output.latent_dist
        return dist.sample(generator) if sample_mode == "sample" else dist.mode()
    if hasattr(encoder_output, "latents"):
        return encoder_output.latents
    raise AttributeError("Could not access latents of provided encoder_output")


def _repeat(embeds: torch.Tensor, n: int) -> torch.Tensor:
    """(B, L, D) -> (B·n, L, D), each prompt's rows next to each other."""
    b, length, _ = embeds.shape
    return embeds.repeat(1, n, 1).view(b * n, length, -1)


def _call_parameters(method) -> set[str]:
    return {p for p in inspect.signature(method).parameters if p not in ("self", "kwargs")}


class StableDiffusionPipeline(StableDiffusionMixin):
    """Text-to-image with Stable Diffusion 1.x / 2.x.

    Example:
        >>> pipe = StableDiffusionPipeline.from_pretrained("path/to/sd", dtype=torch.float16).to("cuda")
        >>> image = pipe("a red circle on a blue background", num_inference_steps=25).images[0]
    """

    def check_inputs(self, prompt, height, width, callback_steps=None, negative_prompt=None, prompt_embeds=None,
                     negative_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                     callback_on_step_end_tensor_inputs=None, num_inference_steps: int = 50, guidance_scale: float = 7.5):
        self._check_size(height, width)
        self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps,
                           guidance_scale, callback_on_step_end_tensor_inputs)
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            raise NotImplementedError("IP-Adapter inputs are not supported by fastdiff yet.")

    def prepare_latents(self, batch_size, num_channels_latents, height, width, dtype, device, generator, latents=None):
        shape = (batch_size, num_channels_latents, int(height) // self.vae_scale_factor, int(width) // self.vae_scale_factor)
        self._check_generator(generator, batch_size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) if latents is None else latents.to(device)
        return latents * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, timesteps: list[int] = None, sigmas: list[float] = None,
                 guidance_scale: float = 7.5, negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int | None = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 ip_adapter_image=None, ip_adapter_image_embeds: list[torch.Tensor] | None = None,
                 output_type: str | None = "pil", return_dict: bool = True,
                 cross_attention_kwargs: dict[str, Any] | None = None, guidance_rescale: float = 0.0,
                 clip_skip: int | None = None, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        callback, callback_steps = _deprecated_call_kwargs(kwargs, _call_parameters(type(self).__call__))
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else size
        height = size[0] * self.vae_scale_factor if height is None else height
        width = size[1] * self.vae_scale_factor if width is None else width
        self.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          ip_adapter_image, ip_adapter_image_embeds,
                          getattr(callback_on_step_end, "tensor_inputs", callback_on_step_end_tensor_inputs),
                          num_inference_steps if timesteps is None and sigmas is None else 1, guidance_scale)
        batch_size = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
        self._check_generator(generator, batch_size)
        shape = (batch_size, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
        self._begin_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        device = self._execution_device

        state = self._encode_for_loop(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, device,
                                      num_images_per_prompt)
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        state["latents"] = self.prepare_latents(batch_size, self.unet.config.in_channels, height, width,
                                                state["prompt_embeds"].dtype, device, generator, latents)
        latents = self._run_loop(state, timesteps, num_inference_steps, generator, eta, batch_size,
                                 self._callbacks(callback_on_step_end, callback_on_step_end_tensor_inputs, callback, callback_steps))
        image, nsfw = self._decode(latents, output_type, generator, state["prompt_embeds"].dtype)
        if not return_dict:
            return (image, nsfw)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)
