"""`DiffusionPipeline`: loads, saves and moves a folder of components described by `model_index.json`.

`model_index.json` maps each component name to `[library, ClassName]`. fastdiff loads Diffusers'
classes as its own classes of the same name, and a short list of transformers classes through
transformers. Nothing else is loaded: no attribute lookup on arbitrary modules, no code from
the folder.

Example:
    >>> pipe = DiffusionPipeline.from_pretrained("path/to/ddpm", dtype=torch.float32).to("cuda")
    >>> image = pipe(num_inference_steps=50).images[0]
    >>> pipe.save_pretrained("copy")
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from .. import loading
from ..configuration import ConfigError, ConfigMixin

logger = logging.getLogger(__name__)

# transformers classes a pipeline folder may name, and the class fastdiff loads for each.
TRANSFORMERS_CLASSES = {
    "CLIPTextModel": "CLIPTextModel",
    "CLIPTextModelWithProjection": "CLIPTextModelWithProjection",
    "CLIPVisionModelWithProjection": "CLIPVisionModelWithProjection",
    "CLIPTokenizer": "CLIPTokenizer",
    "CLIPTokenizerFast": "CLIPTokenizerFast",
    "CLIPImageProcessor": "CLIPImageProcessor",
    "CLIPImageProcessorPil": "CLIPImageProcessor",  # what transformers 5 names it without torchvision
    "CLIPImageProcessorFast": "CLIPImageProcessor",
    "CLIPFeatureExtractor": "CLIPImageProcessor",  # removed from transformers 5; diffusers remaps it too
}
# libraries whose classes are fastdiff's own: "diffusers" and Diffusers' pipeline module names.
FASTDIFF_LIBRARIES = ("diffusers", "stable_diffusion")
_FORBIDDEN_KWARGS = ("custom_pipeline", "custom_revision", "trust_remote_code", "from_flax", "dduf_file")


def fastdiff_class(name: str, base: type | None = None) -> type | None:
    """A class fastdiff exports under a Diffusers name (optionally a subclass of `base`), or None."""
    if not isinstance(name, str) or not name.isidentifier():
        return None
    obj = getattr(importlib.import_module("fastdiff"), name, None)
    if not isinstance(obj, type) or (base is not None and not issubclass(obj, base)):
        return None
    return obj


def library_of(component) -> tuple[str | None, str | None]:
    """The `[library, ClassName]` entry model_index.json records for a component object."""
    if component is None:
        return (None, None)
    cls = component if isinstance(component, type) else type(component)
    root = cls.__module__.split(".")[0]
    if root == "fastdiff":
        return (getattr(cls, "_diffusers_library", "diffusers"), cls.__name__)
    return (root, cls.__name__)


def _signature_keys(cls) -> tuple[set[str], set[str]]:
    """(component names, non-component optional parameters) of a pipeline's __init__."""
    params = inspect.signature(cls.__init__).parameters
    required = {k for k, p in params.items() if k != "self" and p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    optional = {k for k, p in params.items() if p.default is not inspect.Parameter.empty}
    components = required | (set(cls._optional_components) & optional)
    return components, optional - set(cls._optional_components)


class DiffusionPipeline(ConfigMixin):
    """Base class of all pipelines: components, loading, saving, devices and the progress bar."""

    config_name = "model_index.json"
    _optional_components: list[str] = []
    _callback_tensor_inputs: list[str] = []
    model_cpu_offload_seq: str | None = None

    # ---- components --------------------------------------------------------------------------

    def register_modules(self, **kwargs):
        for name, module in kwargs.items():
            self.register_to_config(**{name: library_of(module)})
            setattr(self, name, module)

    def __setattr__(self, name: str, value):
        # Reassigning a component (pipe.scheduler = ...) keeps model_index.json's entry in sync.
        if name in self.__dict__ and isinstance(self.config.get(name), (tuple, list)):
            self.register_to_config(**{name: library_of(value)})
        super().__setattr__(name, value)

    @property
    def components(self) -> dict[str, Any]:
        names, optional = _signature_keys(type(self))
        components = {k: getattr(self, k) for k in self.config if not k.startswith("_") and k not in optional}
        if set(components) != names:
            raise ValueError(f"{type(self).__name__} expects components {sorted(names)}, but has {sorted(components)}.")
        return components

    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in self.components.values() if isinstance(m, torch.nn.Module)]

    @property
    def device(self) -> torch.device:
        devices = [m.device for m in self._modules()]
        for d in devices:
            if d.type not in ("cpu", "meta"):
                return d
        return devices[0] if devices else torch.device("cpu")

    _execution_device = device

    @property
    def dtype(self) -> torch.dtype:
        modules = self._modules()
        return modules[0].dtype if modules else torch.float32

    @property
    def name_or_path(self) -> str | None:
        return self.config.get("_name_or_path")

    def to(self, *args, **kwargs):
        """Move every module component to a device and/or dtype, in place; returns the pipeline."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        kwargs.pop("silence_dtype_warnings", None)
        if kwargs:
            raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
        if len(args) > 2:
            raise ValueError("Please make sure to pass at most two arguments (`device` and `dtype`) `.to(...)`")
        if len(args) == 2 and isinstance(args[0], torch.dtype):
            raise ValueError("When passing two arguments, make sure the first corresponds to `device` and the second to `dtype`.")
        for arg in args:
            if isinstance(arg, torch.dtype):
                if dtype is not None:
                    raise ValueError("You have passed `dtype` both as an argument and as a keyword argument.")
                dtype = arg
            elif arg is not None:
                if device is not None:
                    raise ValueError("You have passed `device` both as an argument and as a keyword argument.")
                device = arg
        device = torch.device(device) if device is not None else None
        for module in self._modules():
            module.to(device=device, dtype=dtype)
        return self

    # ---- progress ----------------------------------------------------------------------------

    def progress_bar(self, iterable=None, total=None):
        config = dict(getattr(self, "_progress_bar_config", {}))
        if iterable is not None:
            return tqdm(iterable, **config)
        if total is not None:
            return tqdm(total=total, **config)
        raise ValueError("Either `total` or `iterable` has to be defined.")

    def set_progress_bar_config(self, **kwargs):
        """Replace the keyword arguments given to tqdm (e.g. `disable=True`)."""
        self._progress_bar_config = kwargs

    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
        """(B, H, W, C) or (H, W, C) floats in [0, 1] -> a list of PIL images."""
        if images.ndim == 3:
            images = images[None, ...]
        images = (images * 255).round().astype("uint8")
        if images.shape[-1] == 1:
            return [PIL.Image.fromarray(image.squeeze(), mode="L") for image in images]
        return [PIL.Image.fromarray(image) for image in images]

    # ---- saving ------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        variant: str | None = None, max_shard_size: int | str | None = None,
                        push_to_hub: bool = False, **kwargs):
        """Write model_index.json and one folder per component; diffusers loads the result."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported by fastdiff; upload the saved folder yourself.")
        with loading.staged_directory(save_directory) as staging:
            self.save_config(staging)
            for name, component in self.components.items():
                if component is None:
                    continue
                if not hasattr(component, "save_pretrained"):
                    raise TypeError(f"Component {name!r} ({type(component).__name__}) has no save_pretrained.")
                options = {"safe_serialization": safe_serialization, "variant": variant, "max_shard_size": max_shard_size}
                accepted = inspect.signature(component.save_pretrained).parameters
                options = {k: v for k, v in options.items() if k in accepted and v is not None}
                component.save_pretrained(staging / name, **options)

    # ---- loading -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load a pipeline folder (or hub id): model_index.json, then each component.

        Keyword arguments: `dtype` (a dtype, or a dict per component with a "default" key;
        `torch_dtype` is the deprecated alias), `variant`, `use_safetensors`, `local_files_only`,
        `cache_dir`, `revision`, `token`, and component overrides (`scheduler=...`,
        `safety_checker=None`).
        """
        for name in _FORBIDDEN_KWARGS:
            if kwargs.get(name):
                raise ValueError(f"{name}= is not supported: fastdiff never loads code from a model folder or hub.")
            kwargs.pop(name, None)
        dtype = kwargs.pop("dtype", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        if dtype is not None and torch_dtype is not None:
            raise ValueError("Pass either dtype= or torch_dtype= (deprecated), not both.")
        if torch_dtype is not None:
            warnings.warn("torch_dtype= is deprecated; use dtype=.", FutureWarning, stacklevel=2)
            dtype = torch_dtype
        variant = kwargs.pop("variant", None)
        use_safetensors = kwargs.pop("use_safetensors", None)
        for ignored in ("low_cpu_mem_usage", "device_map", "max_memory", "offload_folder", "offload_state_dict",
                        "disable_mmap", "provider", "sess_options", "use_onnx", "load_connected_pipeline"):
            kwargs.pop(ignored, None)
        hub = {k: kwargs.pop(k) for k in loading.HUB_KWARGS if k in kwargs}

        folder = _pipeline_folder(pretrained_model_name_or_path, use_safetensors, variant, hub)
        config = cls.load_config(folder)
        pipeline_class = cls._class_for(config)
        names, optional = _signature_keys(pipeline_class)
        passed = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        params = {k: kwargs.pop(k) for k in list(kwargs) if k in optional}
        if kwargs:
            logger.warning(f"Keyword arguments {kwargs} are not expected by {pipeline_class.__name__} and will be ignored.")
        entries = _component_entries(config, names, optional, pipeline_class, params)
        variants = _components_with_variant(folder, entries, variant)

        init_kwargs = dict(params)
        for name in names:
            if name in passed:
                init_kwargs[name] = passed[name]
            elif name in entries:
                init_kwargs[name] = _load_component(
                    folder, name, entries[name], _dtype_for(dtype, name),
                    variant if name in variants else None, use_safetensors,
                )
        missing = {n for n in names if init_kwargs.get(n) is None and n not in passed}
        if missing - set(pipeline_class._optional_components):
            raise ValueError(
                f"Pipeline {pipeline_class.__name__} expected {sorted(names)}, but only "
                f"{sorted(n for n in names if init_kwargs.get(n) is not None)} were passed."
            )
        for name in missing:
            init_kwargs[name] = None
        pipe = pipeline_class(**init_kwargs)
        pipe.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipe

    @classmethod
    def _class_for(cls, config: dict) -> type:
        if cls is not DiffusionPipeline and not getattr(cls, "_is_auto", False):
            return cls
        name = config.get("_class_name")
        pipeline_class = fastdiff_class(name, DiffusionPipeline)
        if pipeline_class is None:
            raise ValueError(f"model_index.json names the pipeline class {name!r}, which fastdiff does not implement.")
        return pipeline_class

    @classmethod
    def from_pipe(cls, pipeline: "DiffusionPipeline", **kwargs):
        """A new pipeline of this class sharing `pipeline`'s components (no copies)."""
        names, optional = _signature_keys(cls)
        components = {k: v for k, v in pipeline.components.items() if k in names}
        params = {k: pipeline.config[k] for k in optional if k in pipeline.config}
        unknown = set(kwargs) - names - optional
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pipe() got unexpected keyword arguments {sorted(unknown)}")
        init = {**{n: None for n in names}, **components, **params, **kwargs}
        new = cls(**init)
        if pipeline.name_or_path is not None:
            new.register_to_config(_name_or_path=pipeline.name_or_path)
        return new


# ---- loading helpers -------------------------------------------------------------------------------


def _pipeline_folder(name_or_path, use_safetensors, variant, hub) -> Path:
    name = str(name_or_path)
    if os.path.isdir(name):
        return Path(name)
    patterns = ["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"]
    if use_safetensors is False:
        patterns.append("*/*.bin")
    return loading.resolve_folder(name, allow_patterns=patterns, **hub)


def _component_entries(config: dict, names: set[str], optional: set[str], pipeline_class, params: dict) -> dict:
    """The `[library, ClassName]` entries of model_index.json for this pipeline, checked."""
    source = getattr(config, "source", "model_index.json")
    entries = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in optional:
            params.setdefault(key, value)
            continue
        if key not in names:
            logger.warning(f"{source}: entry {key!r} is not a component of {pipeline_class.__name__}; ignored.")
            continue
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(v is None or isinstance(v, str) for v in value) and (value[0] is None) == (value[1] is None)):
            raise ConfigError(f"{source}: component {key!r} must be [library, ClassName] or [null, null], got {value!r}")
        entries[key] = tuple(value)
    return entries


def _components_with_variant(folder: Path, entries: dict, variant: str | None) -> set[str]:
    """Components whose folder holds `variant` files; no such folder at all is an error."""
    if variant is None:
        return set()
    found = set()
    for name, (library, _) in entries.items():
        sub = folder / name
        if library is not None and sub.is_dir() and any(f".{variant}." in p.name for p in sub.iterdir()):
            found.add(name)
    if not found:
        raise ValueError(
            f"You are trying to load the model files of the `variant={variant}`, but no such modeling files are available."
        )
    return found


def _dtype_for(dtype, name: str):
    if isinstance(dtype, dict):
        return loading.resolve_dtype(dtype.get(name, dtype.get("default")), argument=f"dtype[{name!r}]")
    return loading.resolve_dtype(dtype)


def _load_component(folder: Path, name: str, entry: tuple, dtype, variant, use_safetensors):
    library, class_name = entry
    if library is None:
        return None
    path = loading.safe_join(folder, name)
    if not path.is_dir():
        raise OSError(f"model_index.json names the component {name!r} ({library}.{class_name}), but {path} does not exist.")
    cls = _component_class(name, library, class_name)
    import transformers

    if issubclass(cls, transformers.PreTrainedModel):
        # transformers falls back to pickle unless use_safetensors=True; fastdiff only unpickles when asked
        options = {"dtype": dtype, "variant": variant, "use_safetensors": use_safetensors is not False}
        return cls.from_pretrained(path, **{k: v for k, v in options.items() if v is not None})
    if issubclass(cls, torch.nn.Module):
        return cls.from_pretrained(path, dtype=dtype, variant=variant, use_safetensors=use_safetensors)
    return cls.from_pretrained(path)


def _component_class(name: str, library: str, class_name: str) -> type:
    """The class for a `[library, ClassName]` entry: fastdiff's own, or one of a few transformers classes."""
    if library in FASTDIFF_LIBRARIES:
        cls = fastdiff_class(class_name)
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise ValueError(f"Component {name!r}: fastdiff does not implement {library}.{class_name}.")
        return cls
    if library == "transformers":
        if class_name not in TRANSFORMERS_CLASSES:
            raise ValueError(
                f"Component {name!r}: transformers.{class_name} is not one of the classes fastdiff loads "
                f"({sorted(TRANSFORMERS_CLASSES)})."
            )
        import transformers

        return getattr(transformers, TRANSFORMERS_CLASSES[class_name])
    raise ValueError(f"Component {name!r}: library {library!r} is not one fastdiff loads (diffusers, transformers).")
