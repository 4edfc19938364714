"""`Conv2d` with a CPU fast path: the weight prepacked once into oneDNN's blocked layout.

On the CPU, `F.conv2d` hands oneDNN a plain (O, I, kH, kW) weight and oneDNN reorders it into its blocked
layout on every call. For the low-resolution, wide convolutions of a UNet (1280 channels at 8x8) that
reorder costs more than the convolution itself. Here the reordered weight is made once and reused:
an SD1.5-size UNet forward on the CPU runs about 25-30% faster in float32 and bfloat16 (bench/models.py).

This is fastdiff's one load-time layout conversion, and it never changes what is saved: the packed
weight lives beside the parameter (not in `state_dict()`), is built lazily by the first CPU forward
(so `from_pretrained` holds each weight once), and is rebuilt whenever the parameter changes (new
dtype or device, in-place edit). The cost is memory: the packed copy adds the size of the conv weights
while the model runs on the CPU. `FASTDIFF_CPU_PREPACK=0` or `set_cpu_prepack(False)` turns it off.

Used only for inference in float32 / bfloat16 on CPUs where oneDNN supports the dtype; everything else
(autograd, CUDA, float16 without hardware support) runs plain `F.conv2d`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

_enabled = os.environ.get("FASTDIFF_CPU_PREPACK", "1").strip().lower() not in ("0", "false", "no", "off")


def set_cpu_prepack(enabled: bool) -> None:
    """Turn the prepacked CPU convolution path on or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


def _available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state dict) that convolves with a prepacked weight on the CPU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._packed: torch.Tensor | None = None
        self._packed_key: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_weight(x)
        if packed is None:
            return super().forward(x)
        # _convolution_pointwise(input, weight, bias, padding, stride, dilation, groups, "none" = no fused op)
        return torch.ops.mkldnn._convolution_pointwise(x, packed, self.bias, list(self.padding), list(self.stride),
                                                       list(self.dilation), self.groups, "none", [], "")

    def _usable(self, x: torch.Tensor) -> bool:
        return (_enabled and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
                and x.dtype == self.weight.dtype and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and not self.weight.is_meta and _available())

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The packed weight for this call, (re)built if the parameter changed; None for the plain path."""
        if not self._usable(x):
            return None
        key = (self.weight.data_ptr(), self.weight._version, self.weight.dtype)
        if self._packed_key != key:
            self._packed, self._packed_key = self._pack(x), key
        return self._packed

    def _pack(self, x: torch.Tensor) -> torch.Tensor | None:
        try:
            return torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(x.shape))
        except RuntimeError:  # e.g. a dtype this CPU's oneDNN cannot pack: stay on the plain path
            return None

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .half(): drop the pack; the next CPU forward builds one for the new weight.
        self._packed, self._packed_key = None, None
        return super()._apply(fn, recurse)
