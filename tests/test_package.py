"""Package layout: kernels/ installs as fastdiff.kernels and never shadows the PyPI `kernels` package."""

import importlib.util
from pathlib import Path

import fastdiff.kernels

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_folder_is_fastdiff_kernels():
    assert [Path(p).resolve() for p in fastdiff.kernels.__path__] == [ROOT / "kernels"]
    assert importlib.util.find_spec("fastdiff.kernels.attention").origin is not None


def test_repository_root_does_not_provide_a_top_level_kernels_package():
    # pytest puts the repository root on sys.path, as `python -m bench` does. transformers imports the
    # unrelated PyPI package `kernels` when it is installed; a kernels/__init__.py here would replace it.
    assert not (ROOT / "kernels" / "__init__.py").exists()
    spec = importlib.util.find_spec("kernels")
    if spec is not None and spec.origin is not None:
        assert Path(spec.origin).resolve().parent != ROOT / "kernels", spec.origin
