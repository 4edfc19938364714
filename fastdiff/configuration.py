"""Diffusers-format configs: `ConfigMixin`, the `register_to_config` decorator and `FrozenDict`.

Every model, scheduler and pipeline records its `__init__` arguments in `self.config` and writes
them as sorted JSON with `_class_name` and `_diffusers_version`, exactly as Diffusers does, so the
same folders load in both libraries.

One rule matters for parity: arguments that were *not* passed (defaults) are remembered in
`_use_default_values` and dropped when another class is built from this config, so that
`EulerDiscreteScheduler.from_config(pndm.config)` picks Euler's own defaults.

Example:
    >>> class Sched(ConfigMixin):
    ...     config_name = "scheduler_config.json"
    ...     @register_to_config
    ...     def __init__(self, num_train_timesteps: int = 1000): ...
    >>> Sched.from_config({"num_train_timesteps": 10}).config.num_train_timesteps
    10
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import math
import os
import types
import typing
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from . import loading

logger = logging.getLogger(__name__)

# The config format fastdiff reads and writes. Written as `_diffusers_version` so that diffusers
# does not apply its pre-0.9 legacy fix-ups to folders fastdiff saves.
DIFFUSERS_FORMAT_VERSION = "0.42.1"


class ConfigError(ValueError):
    """A config value of the wrong type, or a non-finite number; the message names source and key."""


class FrozenDict(OrderedDict):
    """An ordered dict whose keys are also attributes, and which refuses to be edited."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_frozen", True)

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"A {type(self).__name__} cannot be modified; build a new config instead.")

    __delitem__ = setdefault = pop = popitem = update = clear = _refuse

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            self._refuse()
        super().__setattr__(name, value)

    def __setitem__(self, name, value):
        if getattr(self, "_frozen", False):
            self._refuse()
        super().__setitem__(name, value)

    def __reduce__(self):
        return (type(self), (dict(self),))


class ConfigDict(dict):
    """A config read from disk; remembers its file so errors can name it."""

    source: str | None = None


def _init_parameters(cls) -> dict[str, inspect.Parameter]:
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    return {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _fastdiff_class(name) -> type | None:
    """A ConfigMixin class exported by fastdiff under this Diffusers name, if there is one."""
    if not isinstance(name, str):
        return None
    obj = getattr(importlib.import_module("fastdiff"), name, None)
    return obj if isinstance(obj, type) and issubclass(obj, ConfigMixin) else None


class ConfigMixin:
    """Records `__init__` arguments in `self.config`; reads and writes Diffusers' JSON configs."""

    config_name: str | None = None
    ignore_for_config: list[str] = []
    has_compatibles = False
    _compatibles: list[str] = []
    _deprecated_kwargs: list[str] = []

    # ---- recording -----------------------------------------------------------------------

    def register_to_config(self, **kwargs):
        if self.config_name is None:
            raise NotImplementedError(f"{type(self).__name__} must define `config_name`")
        kwargs.pop("kwargs", None)
        previous = self.__dict__.get("_internal_dict", {})
        self._internal_dict = FrozenDict({**previous, **kwargs})

    @property
    def config(self) -> FrozenDict:
        return self._internal_dict

    def __getattr__(self, name: str) -> Any:
        # Reading a config key as an attribute still works, as in diffusers, with a FutureWarning.
        internal = self.__dict__.get("_internal_dict")
        if internal is not None and name in internal:
            warnings.warn(
                f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object attribute is "
                f"deprecated. Please access '{name}' over '{type(self).__name__}'s config object instead, e.g. "
                f"'obj.config.{name}'.",
                FutureWarning,
                stacklevel=2,
            )
            return internal[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    # ---- JSON ----------------------------------------------------------------------------

    def to_json_string(self) -> str:
        config = dict(self.__dict__.get("_internal_dict", {}))
        config["_class_name"] = type(self).__name__
        config["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        for private in ("_ignore_files", "_use_default_values", "_name_or_path"):
            config.pop(private, None)
        config = {k: _json_value(v) for k, v in config.items()}
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike):
        loading.write_text_atomic(Path(json_file_path), self.to_json_string())

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs):
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported by fastdiff; upload the saved folder yourself.")
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"save_directory={str(save_directory)!r} is a file; a directory is expected.")
        save_directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(save_directory / self.config_name)

    def __repr__(self):
        return f"{type(self).__name__} {self.to_json_string()}"

    # ---- reading ---------------------------------------------------------------------------

    @classmethod
    def load_config(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        return_unused_kwargs: bool = False,
        return_commit_hash: bool = False,
        **kwargs,
    ):
        """Read `config_name` from a folder, a file, or a hub id (through the shared HF cache)."""
        if cls.config_name is None:
            raise ValueError(f"{cls.__name__} has no `config_name`; load the config of a concrete class.")
        hub = {k: kwargs.pop(k) for k in loading.HUB_KWARGS if k in kwargs}
        subfolder = kwargs.pop("subfolder", None)
        path = str(pretrained_model_name_or_path)
        if os.path.isfile(path):
            config_file = Path(path)
        else:
            config_file = loading.resolve_file(path, cls.config_name, subfolder=subfolder, **hub)
        config = read_json(config_file)
        outputs: tuple = (config,)
        if return_unused_kwargs:
            outputs += (kwargs,)
        if return_commit_hash:
            outputs += (loading.commit_hash_of(config_file),)
        return outputs if len(outputs) > 1 else config

    @classmethod
    def from_config(cls, config: dict | None = None, return_unused_kwargs: bool = False, **kwargs):
        """Build the class from a config dict; `kwargs` override config values.

        Keys the class does not take warn and are ignored; keys of compatible classes are kept
        (hidden) in the new config so that converting back and forth loses nothing.
        """
        if "pretrained_model_name_or_path" in kwargs:
            config = kwargs.pop("pretrained_model_name_or_path")
        if config is None:
            raise ValueError("Please make sure to provide a config as the first positional argument.")
        if not isinstance(config, dict):
            warnings.warn(
                "It is deprecated to pass a pretrained model name or path to `from_config`; "
                f"use {cls.__name__}.from_pretrained(...) or load_config(...) instead.",
                FutureWarning,
                stacklevel=2,
            )
            config, kwargs = cls.load_config(config, return_unused_kwargs=True, **kwargs)
        init_dict, unused, hidden = cls.extract_init_dict(config, **kwargs)
        if "dtype" in unused:
            init_dict["dtype"] = unused.pop("dtype")
        for name in cls._deprecated_kwargs:
            if name in unused:
                init_dict[name] = unused.pop(name)
        obj = cls(**init_dict)
        if "_class_name" in hidden:
            hidden["_class_name"] = cls.__name__
        obj.register_to_config(**hidden)
        unused = {**unused, **hidden}
        return (obj, unused) if return_unused_kwargs else obj

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        names = set([cls.__name__] + list(cls._compatibles))
        return [c for c in (_fastdiff_class(n) for n in sorted(names)) if c is not None]

    @classmethod
    def extract_init_dict(cls, config_dict: dict, **kwargs):
        """Split a config into (init arguments, unused keys, hidden keys), as diffusers does."""
        source = getattr(config_dict, "source", None) or f"the config given to {cls.__name__}"
        used_defaults = config_dict.get("_use_default_values", [])
        config = {k: v for k, v in config_dict.items() if k not in used_defaults and k != "_use_default_values"}
        original = dict(config)

        params = _init_parameters(cls)
        expected = set(params) - set(cls.ignore_for_config)

        # Keys only a compatible class takes are kept hidden, not warned about.
        if cls.has_compatibles:
            compatible_keys = set().union(*(set(_init_parameters(c)) for c in cls._get_compatibles()))
            config = {k: v for k, v in config.items() if k not in compatible_keys - set(params)}

        orig_name = config.pop("_class_name", cls.__name__)
        if not isinstance(orig_name, (str, list, tuple)):
            raise ConfigError(f"{source}: `_class_name` must be a string, got {orig_name!r}")
        orig_cls = _fastdiff_class(orig_name) if orig_name != cls.__name__ else None
        if orig_cls is not None:
            config = {k: v for k, v in config.items() if k not in set(_init_parameters(orig_cls)) - expected}
        config = {k: v for k, v in config.items() if not k.startswith("_") and k != "quantization_config"}

        init_dict = {}
        for key in expected:
            if key in kwargs:
                config.pop(key, None)
                init_dict[key] = kwargs.pop(key)
            elif key in config:
                init_dict[key] = config.pop(key)
        for key, value in init_dict.items():
            check_config_value(source, key, value, params[key])

        if config:
            logger.warning(
                f"The config attributes {config} were passed to {cls.__name__}, but are not expected and will be "
                f"ignored. Please verify your {cls.config_name} configuration file."
            )
        unused = {**config, **kwargs}
        hidden = {k: v for k, v in original.items() if k not in init_dict}
        return init_dict, unused, hidden


def register_to_config(init):
    """Decorate `__init__` of a ConfigMixin so that every argument lands in `self.config`.

    Arguments that were not passed are listed under `_use_default_values` (see module docstring).
    Private arguments (`_name`) go to the config only and never reach `__init__`.
    """

    @functools.wraps(init)
    def inner_init(self, *args, **kwargs):
        if not isinstance(self, ConfigMixin):
            raise RuntimeError(f"@register_to_config is applied to {type(self).__name__}, which is not a ConfigMixin")
        init_kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        private = {k: v for k, v in kwargs.items() if k.startswith("_")}
        ignore = set(getattr(self, "ignore_for_config", []))
        params = [
            (n, p.default)
            for i, (n, p) in enumerate(inspect.signature(init).parameters.items())
            if i > 0 and n not in ignore and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        recorded = dict(zip((n for n, _ in params), args))
        for name, default in params:
            if name not in recorded:
                recorded[name] = init_kwargs.get(name, default)
        defaults_used = set(recorded) - set(init_kwargs)
        if defaults_used:
            recorded["_use_default_values"] = sorted(defaults_used)
        self.register_to_config(**{**private, **recorded})
        init(self, *args, **init_kwargs)

    return inner_init


# ---- JSON values and checks --------------------------------------------------------------------


def _json_value(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return value.to_dict()
    return value


def read_json(path: Path) -> ConfigDict:
    """Parse a JSON config; a file that is not a JSON object is an error naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"It looks like the config file at '{path}' is not a valid JSON file: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"The config file at '{path}' must hold a JSON object, not {type(data).__name__}.")
    config = ConfigDict(data)
    config.source = str(path)
    return config


def _is_nonfinite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_is_nonfinite(v) for v in value)
    if isinstance(value, dict):
        return any(_is_nonfinite(v) for v in value.values())
    return False


def _matches(value, hint) -> bool:
    """Loose structural check of a JSON value against a type hint (numbers, strings, sequences)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return not args or all(any(_matches(v, a) for a in args) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # tensors, dtypes and other rich types are checked by the class itself


def _hint_from_default(default):
    if default is None or default is inspect.Parameter.empty:
        return Any
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return float  # numbers are interchangeable when nothing narrower is declared
    if isinstance(default, (list, tuple)):
        return list
    return type(default) if isinstance(default, (str, dict)) else Any


def _resolved_hint(param: inspect.Parameter, owner_globals: dict | None = None):
    hint = param.annotation
    if isinstance(hint, str):
        try:
            hint = eval(hint, {**vars(typing), **(owner_globals or {}), "torch": _torch()})  # noqa: S307
        except Exception:
            hint = inspect.Parameter.empty
    return hint


def _torch():
    import torch

    return torch


def check_config_value(source: str, key: str, value, param: inspect.Parameter):
    """Raise ConfigError if `value` does not fit parameter `key`, or is a non-finite number."""
    if _is_nonfinite(value) and not _is_nonfinite(param.default):
        raise ConfigError(f"{source}: config key {key!r} has the non-finite value {value!r}; a finite number is required.")
    hint = _resolved_hint(param)
    if hint is inspect.Parameter.empty:
        hint = _hint_from_default(param.default)
    if value is not None and not _matches(value, hint):
        expected = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        raise ConfigError(
            f"{source}: config key {key!r} has the value {value!r} of type {type(value).__name__}; "
            f"expected {expected}."
        )
