"""Seeded noise, drawn exactly where and in the order Diffusers draws it.

Parity with Diffusers for the same seed depends on three things this function keeps: the draw
happens on the *generator's* device (a CPU generator draws on the CPU, then the tensor moves), a
list of generators draws one sample per generator, and the dtype is chosen at the draw.
"""

from __future__ import annotations

import torch


def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None) -> torch.Tensor:
    """Standard normal noise of `shape`; `generator` is one torch.Generator or one per batch row."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    draw_device = device
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    if generator is not None:
        gen_type = (generator[0] if isinstance(generator, (list, tuple)) else generator).device.type
        if gen_type != device.type:
            if gen_type != "cpu":
                raise ValueError(f"Cannot generate a {device} tensor from a generator of type {gen_type}.")
            draw_device = torch.device("cpu")
    layout = layout or torch.strided
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"generator is a list of {len(generator)} generators, but the batch size is {shape[0]}.")
        row = (1, *shape[1:])
        draws = [torch.randn(row, generator=g, device=draw_device, dtype=dtype, layout=layout) for g in generator]
        return torch.cat(draws, dim=0).to(device)
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype, layout=layout).to(device)
