"""Output containers shared by models, schedulers and pipelines, with Diffusers' access rules.

A `BaseOutput` is a dataclass that also behaves as an ordered dict and a tuple of its non-None
fields: `out.images`, `out["images"]` and `out[0]` are the same object.

Example:
    >>> out = ImagePipelineOutput(images=images)
    >>> out.images is out[0] is out["images"]
    True
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.utils._pytree as pytree


class BaseOutput(OrderedDict):
    """Dataclass fields, reachable by attribute, key, or position (None fields are skipped)."""

    def __init_subclass__(cls) -> None:
        # pytree registration lets outputs cross torch.compile / DDP boundaries like a dict.
        pytree.register_pytree_node(
            cls,
            pytree._dict_flatten,
            lambda values, context: cls(**pytree._dict_unflatten(values, context)),
            serialized_type_name=f"{cls.__module__}.{cls.__name__}",
        )

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                self[field.name] = value

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"A {type(self).__name__} cannot be modified that way.")

    __delitem__ = setdefault = pop = update = _refuse

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return dict(self.items())[key]
        return self.to_tuple()[key]

    def __setattr__(self, name: Any, value: Any) -> None:
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __reduce__(self):
        return (type(self), (), None, None, iter(self.items()))

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self[k] for k in self.keys())


@dataclass
class ImagePipelineOutput(BaseOutput):
    """images: a list of PIL images, or an array of shape (batch, height, width, channels)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


@dataclass
class AudioPipelineOutput(BaseOutput):
    """audios: an array of shape (batch, channels, samples)."""

    audios: np.ndarray | torch.Tensor
