"""Where weights come from and how they are written: local folders and hub ids, safetensors files,
variants, shards, dtypes, and saves that never leave a folder half-written.

Hub ids resolve through huggingface_hub into the same cache diffusers uses; `HF_HUB_OFFLINE=1` and
`local_files_only=True` never touch the network. Pickle (`.bin`) weights are read only when the
caller passes `use_safetensors=False`, and then only with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import torch

HUB_KWARGS = ("cache_dir", "local_files_only", "revision", "token", "force_download", "proxies")
MODEL_WEIGHTS = "diffusion_pytorch_model"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}


class WeightsError(OSError):
    """Weights that are missing, refused (pickle without consent) or unreadable."""


# ---- names and paths ---------------------------------------------------------------------------


def safe_join(folder: Path, *parts: str) -> Path:
    """`folder/parts...`, refusing any part that would leave `folder` (absolute, `..`, separators)."""
    for part in parts:
        if not isinstance(part, str) or not part or part in (".", "..") or "/" in part or "\\" in part:
            raise ValueError(f"{part!r} is not a plain file or folder name inside {str(folder)!r}")
    path = Path(folder).joinpath(*parts)
    if Path(os.path.abspath(path)).parent != Path(os.path.abspath(Path(folder).joinpath(*parts[:-1]))):
        raise ValueError(f"{'/'.join(parts)!r} escapes {str(folder)!r}")
    return path


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def _hub_kwargs(kwargs: dict) -> dict:
    hub = {k: v for k, v in kwargs.items() if k in HUB_KWARGS and v is not None}
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        hub["local_files_only"] = True  # read at call time, not only when huggingface_hub was imported
    return hub


def resolve_folder(name_or_path: str | os.PathLike, allow_patterns: list[str] | None = None, **kwargs) -> Path:
    """A local folder as it is, or a hub id's snapshot in the shared HF cache (downloading if allowed)."""
    name = str(name_or_path)
    if os.path.isdir(name):
        return Path(name)
    if _looks_like_path(name) or not name:
        raise OSError(f"{name!r} is neither a valid local path nor a valid repo id: no such folder.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=allow_patterns, **_hub_kwargs(kwargs)))
    except Exception as err:  # huggingface_hub raises many types; the caller needs one clear message
        raise OSError(
            f"Could not resolve {name!r}: it is not a local folder, and the hub snapshot is not available "
            f"({type(err).__name__}: {err})"
        ) from err


def resolve_file(name_or_path: str | os.PathLike, filename: str, subfolder: str | None = None, **kwargs) -> Path:
    """One file of a local folder or of a hub repo (through the shared HF cache)."""
    name = str(name_or_path)
    parts = [p for p in (subfolder or "").split("/") if p] + [filename]
    if os.path.isdir(name):
        path = safe_join(Path(name), *parts)
        if not path.is_file() and subfolder is None:
            raise OSError(f"Error no file named {filename} found in directory {name}.")
        if not path.is_file():
            raise OSError(f"Error no file named {filename} found in directory {Path(name) / subfolder}.")
        return path
    if _looks_like_path(name) or not name:
        raise OSError(f"{name!r} is neither a valid local path nor a valid repo id: no such folder.")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(name, filename, subfolder=subfolder, **_hub_kwargs(kwargs)))
    except Exception as err:
        raise OSError(f"Could not get {filename!r} of {name!r} ({type(err).__name__}: {err})") from err


def commit_hash_of(path: Path) -> str | None:
    """The commit of a file inside the HF cache (`.../snapshots/<sha>/...`), else None."""
    match = re.search(r"snapshots[/\\]([0-9a-f]{40})[/\\]", str(path))
    return match.group(1) if match else None


# ---- dtypes --------------------------------------------------------------------------------------


def resolve_dtype(dtype=None, torch_dtype=None, argument: str = "dtype") -> torch.dtype | None:
    """`dtype=` (and the deprecated `torch_dtype=` alias) as a torch.dtype, or None."""
    if dtype is not None and torch_dtype is not None:
        raise ValueError("Pass either dtype= or torch_dtype= (deprecated), not both.")
    if torch_dtype is not None:
        warnings.warn("torch_dtype= is deprecated; use dtype=.", FutureWarning, stacklevel=3)
        dtype = torch_dtype
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"{argument}={dtype!r} is not a torch.dtype; expected e.g. torch.float16 or 'bfloat16'.")


# ---- reading weights -------------------------------------------------------------------------------


def _variant_name(base: str, ext: str, variant: str | None) -> str:
    return f"{base}.{variant}.{ext}" if variant else f"{base}.{ext}"


def _index_name(base: str, ext: str, variant: str | None) -> str:
    return f"{base}.{ext}.index.{variant}.json" if variant else f"{base}.{ext}.index.json"


def weight_files(folder: Path, base: str = MODEL_WEIGHTS, variant: str | None = None,
                 use_safetensors: bool | None = None) -> list[Path]:
    """The weight files to read from `folder`: one file, or the shards its index names.

    safetensors always wins; pickle `.bin` files are used only with `use_safetensors=False`.
    """
    folder = Path(folder)
    exts = ["safetensors"] + (["bin"] if use_safetensors is False else [])
    for ext in exts:
        single = folder / _variant_name(base, ext, variant)
        if single.is_file():
            return [single]
        index = folder / _index_name(base, ext, variant)
        if index.is_file():
            return _shards_of(index, folder)
    if use_safetensors is not False and any(folder.glob(f"{base}*.bin")):
        raise WeightsError(
            f"{folder} holds only pickle weights ({base}*.bin). fastdiff does not unpickle unless asked: pass "
            "use_safetensors=False to load them (read with torch.load(weights_only=True)), or convert them to "
            "safetensors."
        )
    wanted = _variant_name(base, "safetensors", variant)
    hint = f" (variant={variant!r})" if variant else ""
    raise WeightsError(f"Error no file named {wanted}{hint} or a sharded index of it found in directory {folder}.")


def _shards_of(index: Path, folder: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise WeightsError(f"The shard index {index} is malformed: {err!r}") from None
    shards = [safe_join(folder, name) for name in names]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise WeightsError(f"The shard index {index} names files that are missing: {missing}")
    return shards


def iter_tensors(files: list[Path], dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from each file, one tensor at a time, cast to `dtype` if floating."""
    for path in files:
        if path.suffix == ".safetensors":
            yield from _iter_safetensors(path, dtype)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:
                raise WeightsError(f"Could not read pickle weights {path} with weights_only=True: {err}") from err
            for name, tensor in state.items():
                yield name, _cast(tensor, dtype)


def _iter_safetensors(path: Path, dtype):
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as err:
        raise WeightsError(f"{path} is not a readable safetensors file: {err}") from err
    with handle as f:
        for name in f.keys():
            yield name, _cast(f.get_tensor(name), dtype)


def _cast(tensor: torch.Tensor, dtype):
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


# ---- writing -------------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str):
    """Write a text file through a temporary file and a rename: readers never see half of it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staged_directory(destination: str | os.PathLike, replaces=lambda name: False) -> Iterator[Path]:
    """Build a folder's new content in a sibling staging folder; move it in only if all went well.

    On success, files of `destination` for which `replaces(name)` is true and that the new content
    does not contain (stale shards of an earlier save) are removed. On failure the staging folder
    is deleted and `destination` is left exactly as it was.
    """
    destination = Path(destination)
    if destination.is_file():
        raise ValueError(f"save_directory={str(destination)!r} is a file; a directory is expected.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.staging-"))
    try:
        yield staging
        destination.mkdir(exist_ok=True)
        new = {p.name for p in staging.iterdir()}
        for old in destination.iterdir():
            if old.name not in new and replaces(old.name) and old.is_file():
                old.unlink()
        for entry in staging.iterdir():
            target = destination / entry.name
            if target.is_dir() and entry.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_weights_file(name: str, base: str = MODEL_WEIGHTS, variant: str | None = None) -> bool:
    """Is `name` a weights file (single, shard or index) of this base name and variant?"""
    stem = re.escape(f"{base}.{variant}" if variant else base)
    index_suffix = re.escape(f".{variant}") if variant else ""
    pattern = rf"{stem}(-\d{{5}}-of-\d{{5}})?\.(safetensors|bin)|{re.escape(base)}\.(safetensors|bin)\.index{index_suffix}\.json"
    return re.fullmatch(pattern, name) is not None


def save_weights(state_dict: dict[str, torch.Tensor], folder: Path, base: str = MODEL_WEIGHTS,
                 variant: str | None = None, max_shard_size: int | str | None = None,
                 safe_serialization: bool = True):
    """Write a state dict as diffusers does: one file, or `-0000k-of-0000n` shards plus an index."""
    from huggingface_hub import split_torch_state_dict_into_shards

    ext = "safetensors" if safe_serialization else "bin"
    state_dict = {k: v.detach().contiguous() for k, v in state_dict.items()}
    pattern = (f"{base}.{variant}" if variant else base) + "{suffix}." + ext
    split = split_torch_state_dict_into_shards(
        state_dict, filename_pattern=pattern, max_shard_size=max_shard_size if max_shard_size else 2**62
    )
    for filename, names in split.filename_to_tensors.items():
        shard = {n: state_dict[n] for n in names}
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(shard, str(folder / filename), metadata={"format": "pt"})
        else:
            torch.save(shard, folder / filename)
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": dict(split.tensor_to_filename)}
        write_text_atomic(folder / _index_name(base, ext, variant), json.dumps(index, indent=2, sort_keys=True) + "\n")
