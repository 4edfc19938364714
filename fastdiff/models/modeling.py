"""`ModelMixin`: a torch module with a Diffusers config that loads and saves Diffusers model folders.

Loading builds the model on the meta device and then assigns the tensors read from disk, so the
weights are never held twice. Loading is strict: missing, unexpected or mis-shaped keys raise an
error that lists them.

Example:
    >>> unet = UNet2DModel.from_pretrained("path/to/pipeline", subfolder="unet", dtype=torch.float16)
    >>> unet.save_pretrained("out/unet", variant="fp16")
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from .. import loading
from ..configuration import ConfigMixin


class LoadingError(ValueError):
    """A checkpoint whose keys or shapes do not match the model built from its config."""


class ModelMixin(torch.nn.Module, ConfigMixin):
    """Base class of fastdiff's models: Diffusers-compatible `from_pretrained` / `save_pretrained`."""

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    def __getattr__(self, name: str):
        # nn.Module keeps parameters and submodules out of __dict__; ask it first, then the config.
        try:
            return torch.nn.Module.__getattr__(self, name)
        except AttributeError:
            return ConfigMixin.__getattr__(self, name)

    # ---- properties ------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    # ---- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load a Diffusers model folder (or hub id) into this class.

        Keyword arguments: `subfolder`, `dtype` (or the deprecated `torch_dtype`), `variant`,
        `use_safetensors`, `local_files_only`, `cache_dir`, `revision`, `token`, and config
        overrides. `low_cpu_mem_usage` is accepted; loading always goes through the meta device.
        """
        subfolder = kwargs.pop("subfolder", None)
        dtype = loading.resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
        variant = kwargs.pop("variant", None)
        use_safetensors = kwargs.pop("use_safetensors", None)
        for ignored in ("low_cpu_mem_usage", "output_loading_info", "device_map", "mirror"):
            kwargs.pop(ignored, None)
        hub = {k: kwargs.pop(k) for k in loading.HUB_KWARGS if k in kwargs}

        name = str(pretrained_model_name_or_path)
        if os.path.isdir(name):
            folder = Path(name)
        else:
            prefix = f"{subfolder}/" if subfolder else ""
            patterns = [f"{prefix}*.json", f"{prefix}*.safetensors"] + ([f"{prefix}*.bin"] if use_safetensors is False else [])
            folder = loading.resolve_folder(name, allow_patterns=patterns, **hub)
        if subfolder:
            folder = loading.safe_join(folder, *[p for p in subfolder.split("/") if p])

        config = cls.load_config(folder)
        files = loading.weight_files(folder, variant=variant, use_safetensors=use_safetensors)
        with torch.device("meta"):
            model = cls.from_config(config, **kwargs)
        model._load_tensors(loading.iter_tensors(files, dtype), source=str(folder))
        model.register_to_config(_name_or_path=name)
        model._after_load()
        return model.eval()

    def _load_tensors(self, tensors, source: str):
        """Assign tensors from disk to the meta-built model; strict about names and shapes."""
        expected = self.state_dict()
        loaded, unexpected, mis_shaped = {}, [], []
        for name, tensor in tensors:
            if name not in expected:
                unexpected.append(name)
            elif tuple(tensor.shape) != tuple(expected[name].shape):
                mis_shaped.append(f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[name].shape)}")
            else:
                loaded[name] = tensor
        missing = sorted(set(expected) - set(loaded) - {m.split(":")[0] for m in mis_shaped})
        if missing or unexpected or mis_shaped:
            lines = [f"Cannot load {type(self).__name__} from {source}:"]
            for label, keys in (("missing keys", missing), ("unexpected keys", sorted(unexpected)),
                                ("mis-shaped keys", mis_shaped)):
                if keys:
                    lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:20])}" + (" ..." if len(keys) > 20 else ""))
            raise LoadingError("\n".join(lines))
        self.load_state_dict(loaded, strict=True, assign=True)
        self._materialize_non_persistent()

    def _materialize_non_persistent(self):
        """Buffers that are not saved (computed at init) were built on meta; rebuild them on the CPU."""
        for module in self.modules():
            for name in list(module._non_persistent_buffers_set):
                buf = module._buffers.get(name)
                if buf is not None and buf.is_meta:
                    raise LoadingError(
                        f"{type(module).__name__}.{name} is a non-persistent buffer built on the meta device; "
                        "compute it in forward or make it persistent."
                    )

    def _after_load(self):
        """Hook for load-time layout conversions (for example fused projections); none by default."""

    # ---- saving ----------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        save_function=None,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ):
        """Write `config.json` and the weights as diffusers does; a failed save changes nothing on disk."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported by fastdiff; upload the saved folder yourself.")
        if save_function is not None:
            raise NotImplementedError("save_function is not supported; fastdiff writes safetensors (or torch.save).")
        if not is_main_process:
            return
        stale = functools.partial(loading.is_weights_file, variant=variant)
        with loading.staged_directory(save_directory, replaces=stale) as staging:
            self.save_config(staging)
            loading.save_weights(self.state_dict(), staging, variant=variant, max_shard_size=max_shard_size,
                                 safe_serialization=safe_serialization)
