"""Config values fastdiff does not implement: one error type, always naming the key.

Diffusers accepts many keys that select features fastdiff has no code for. Such keys stay in the
`__init__` signatures with Diffusers' defaults (so configs round-trip), and any other value is
refused here, never silently ignored.

Example:
    >>> require_default("UNet2DConditionModel", "addition_embed_type", "text", None)
    Traceback (most recent call last):
    UnsupportedConfigError: UNet2DConditionModel: config key 'addition_embed_type'='text' is not supported ...
"""

from __future__ import annotations

from typing import Any, Iterable


class UnsupportedConfigError(NotImplementedError, ValueError):
    """A config key set to a value fastdiff does not implement (or a block type it does not know)."""


def require_default(owner: str, key: str, value: Any, default: Any) -> None:
    """Raise unless `value` is Diffusers' default for `key`."""
    if value != default:
        raise UnsupportedConfigError(
            f"{owner}: config key {key!r}={value!r} is not supported by fastdiff "
            f"(only the default {default!r} is implemented)."
        )


def require_one_of(owner: str, key: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise unless `value` is one of the implemented choices for `key`."""
    allowed = list(allowed)
    if value not in allowed:
        raise UnsupportedConfigError(
            f"{owner}: config key {key!r}={value!r} is not supported by fastdiff; implemented values: {allowed}."
        )


def per_block(owner: str, key: str, value: Any, num_blocks: int) -> list:
    """A scalar repeated per block, or a per-block list/tuple checked for length."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_blocks:
            raise ValueError(f"{owner}: config key {key!r} has {len(value)} entries but there are {num_blocks} blocks.")
        return list(value)
    return [value] * num_blocks
