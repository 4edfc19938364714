"""loading.py: hub ids through the shared HF cache (offline), safe paths, dtype names."""

import pytest
import torch

from fastdiff import loading

SHA = "0123456789abcdef0123456789abcdef01234567"


def _fake_cache(root, repo="org/model"):
    """A pre-filled huggingface_hub cache: models--org--model/{refs/main, snapshots/<sha>/...}."""
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(SHA)
    snapshot = base / "snapshots" / SHA
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (snapshot / "unet" / "config.json").write_text("{}")
    return snapshot


def test_hub_id_resolves_to_the_cached_snapshot_offline(tmp_path):
    snapshot = _fake_cache(tmp_path)
    folder = loading.resolve_folder("org/model", cache_dir=tmp_path, local_files_only=True)
    assert folder == snapshot
    path = loading.resolve_file("org/model", "config.json", subfolder="unet", cache_dir=tmp_path,
                                local_files_only=True)
    assert path == snapshot / "unet" / "config.json"
    assert loading.commit_hash_of(path) == SHA


def test_hf_hub_offline_is_read_at_call_time(tmp_path, monkeypatch):
    _fake_cache(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loading.resolve_folder("org/model", cache_dir=tmp_path).name == SHA
    with pytest.raises(OSError, match="not available"):
        loading.resolve_folder("org/other", cache_dir=tmp_path)


def test_paths_that_do_not_exist_are_not_sent_to_the_hub(tmp_path):
    with pytest.raises(OSError, match="neither a valid local path nor a valid repo id"):
        loading.resolve_folder(str(tmp_path / "missing" / "folder"))


@pytest.mark.parametrize("part", ["..", "/etc", "a/b", "", "."])
def test_safe_join_refuses_escapes(tmp_path, part):
    with pytest.raises(ValueError, match="plain file or folder name"):
        loading.safe_join(tmp_path, part)


def test_dtype_names():
    assert loading.resolve_dtype("bf16") is torch.bfloat16
    assert loading.resolve_dtype("torch.float16") is torch.float16
    assert loading.resolve_dtype(None) is None
    with pytest.raises(ValueError, match="dtype=3"):
        loading.resolve_dtype(3)
