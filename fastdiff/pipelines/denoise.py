"""The one denoising loop every Stable Diffusion task runs.

Text-to-image, image-to-image and inpainting differ only in the first latents and the mask they
prepare; from there this function does the rest:

    for t in timesteps:
        ε̂ = unet(scale(x_t) [+ mask, masked-image latents], t, text)     # one batch: [uncond, cond]
        ε̂ = ε̂_u + g (ε̂_c - ε̂_u)                                        # classifier-free guidance, and
        x = scheduler.step(ε̂, t, x)                                      # the update: one fused_step launch
        x = (1 - m) · noised(x_image, next t) + m · x                    # 4-channel inpainting only

The loop reads its tensors from a `state` dict so that `callback_on_step_end` can see and replace
them (latents, prompt_embeds, negative_prompt_embeds, mask, masked_image_latents), as in Diffusers.
Nothing in the loop reads a tensor value on the host, so it can be captured as one CUDA graph.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from .. import ops


def retrieve_timesteps(scheduler, num_inference_steps: int | None = None, device=None,
                       timesteps: list[int] | None = None, sigmas: list[float] | None = None, **kwargs):
    """Call `set_timesteps` with a step count or a custom schedule; returns (timesteps, loop length)."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
    params = inspect.signature(scheduler.set_timesteps).parameters
    for name, value in (("timesteps", timesteps), ("sigmas", sigmas)):
        if value is not None:
            if name not in params:
                kind = "timestep" if name == "timesteps" else "sigmas"
                raise ValueError(
                    f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                    f" {kind} schedules. Please check whether you are using the correct scheduler."
                )
            scheduler.set_timesteps(**{name: value}, device=device, **kwargs)
            return scheduler.timesteps, len(scheduler.timesteps)
    scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
    return scheduler.timesteps, num_inference_steps


def extra_step_kwargs(scheduler, generator, eta: float) -> dict[str, Any]:
    """`eta` and `generator` go to `scheduler.step` only if it takes them (as in Diffusers)."""
    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0):
    """Rescale guided noise to the std of the text-conditioned prediction (Lin et al. 2023, §3.4):
    ε = φ · ε_cfg · σ(ε_text) / σ(ε_cfg) + (1 - φ) · ε_cfg."""
    dims = list(range(1, noise_pred_text.ndim))
    rescaled = noise_cfg * (noise_pred_text.std(dim=dims, keepdim=True) / noise_cfg.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 512, dtype=torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of 1000·w, for UNets conditioned on the guidance scale (LCM)."""
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    args = (w * 1000.0).to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if embedding_dim % 2 == 1 else emb


def denoise(pipe, state: dict[str, torch.Tensor], timesteps: torch.Tensor, num_inference_steps: int,
            step_kwargs: dict[str, Any], timestep_cond: torch.Tensor | None = None,
            callback_on_step_end: Callable | None = None, callback_on_step_end_tensor_inputs=("latents",),
            callback: Callable | None = None, callback_steps: int | None = None) -> torch.Tensor:
    """Run the loop on `state["latents"]`; returns the final latents.

    `state` holds latents, prompt_embeds (already [negative, positive] under CFG) and
    negative_prompt_embeds; inpainting adds mask and masked_image_latents (9-channel UNets) or
    image_latents, noise and mask (4-channel UNets, blended back after every step).
    """
    unet, scheduler = pipe.unet, pipe.scheduler
    cfg, g = pipe.do_classifier_free_guidance, pipe.guidance_scale
    # guidance + scheduler update as one ops.scheduler_step launch (schedulers/fused.py), unless a stage that
    # is not linear (guidance_rescale's std ratio, thresholding) or an option the fused step lacks is in play
    # Only where Triton runs: on the CPU the torch twin of the fused step is slower than step() itself.
    fused = (ops.uses_triton(state["latents"].device) and not (cfg and pipe.guidance_rescale > 0.0)
             and scheduler.supports_fused_step(**step_kwargs))
    guidance = torch.tensor(float(g), device=state["latents"].device) if cfg and fused else None  # g on the device
    concat_mask = unet.config.in_channels == 9 and "masked_image_latents" in state
    blend_mask = "image_latents" in state
    num_warmup_steps = len(timesteps) - num_inference_steps * scheduler.order
    pipe._num_timesteps = len(timesteps)
    with pipe.progress_bar(total=num_inference_steps) as progress_bar:
        for i, t in enumerate(timesteps):
            if pipe.interrupt:
                continue
            latents = state["latents"]
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            if concat_mask:
                model_input = torch.cat([model_input, state["mask"], state["masked_image_latents"]], dim=1)
            noise_pred = unet(model_input, t, encoder_hidden_states=state["prompt_embeds"], timestep_cond=timestep_cond,
                              cross_attention_kwargs=pipe.cross_attention_kwargs, return_dict=False)[0]
            if fused:
                latents = scheduler.fused_step(noise_pred, t, latents, guidance, **step_kwargs)[0]
            else:
                if cfg:
                    uncond, text = noise_pred.chunk(2)
                    noise_pred = uncond + g * (text - uncond)
                    if pipe.guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, text, guidance_rescale=pipe.guidance_rescale)
                latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
            if blend_mask:
                latents = _blend_known_region(scheduler, state, latents, timesteps, i, cfg)
            state["latents"] = latents
            if callback_on_step_end is not None:
                outputs = callback_on_step_end(pipe, i, t, {k: state[k] for k in callback_on_step_end_tensor_inputs})
                state.update({k: v for k, v in (outputs or {}).items() if k in state})
            if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % scheduler.order == 0):
                progress_bar.update()
                if callback is not None and i % callback_steps == 0:
                    callback(i // getattr(scheduler, "order", 1), t, state["latents"])
    return state["latents"]


def _blend_known_region(scheduler, state, latents, timesteps, i: int, cfg: bool) -> torch.Tensor:
    """4-channel inpainting: outside the mask, put back the image latents noised to the next timestep."""
    mask = state["mask"].chunk(2)[0] if cfg else state["mask"]
    known = state["image_latents"]
    if i < len(timesteps) - 1:
        known = scheduler.add_noise(known, state["noise"], timesteps[i + 1 : i + 2])
    return (1 - mask) * known + mask * latents
