"""The backend table in fastdiff/ops.py: selection, fallbacks, fake implementations, real dispatch.

Runs under the interpreter (tests/kernels/conftest.py sets TRITON_INTERPRET=1), so "triton" can run
on CPU tensors here; the cannot-run case removes the variable for one test.
"""

import threading

import pytest
import torch

from fastdiff import ops
from fastdiff.kernels import attention, geglu, group_norm, layer_norm, linear


def _args(device="cpu", dtype=torch.float32):
    """One valid call per op, as the models make them."""
    t = lambda *shape: torch.randn(*shape, dtype=dtype, device=device)  # noqa: E731
    qkv = t(2, 77, 3 * 2 * 40)
    return {
        "attention": (qkv[..., :80], qkv[..., 80:160], qkv[..., 160:], 2, 40**-0.5, False),
        "group_norm": (t(2, 20, 5, 3), 2, t(20), t(20), 1e-5, "silu", t(2, 20)),
        "layer_norm": (t(3, 7, 40), t(40), t(40), 1e-5),
        "geglu": (t(2, 5, 80),),
        "linear": (t(2, 5, 48), t(80, 48), t(80), t(2, 5, 40), "geglu"),
    }


TRITON_FNS = {"attention": attention.attention, "group_norm": group_norm.group_norm,
              "layer_norm": layer_norm.layer_norm, "geglu": geglu.geglu, "linear": linear.linear}


@pytest.fixture(autouse=True)
def _clean_backend(monkeypatch):
    monkeypatch.delenv("FASTDIFF_BACKEND", raising=False)
    monkeypatch.setattr(ops, "_process_backend", None)
    yield


def test_default_is_torch_on_cpu():
    assert ops.current_backend() == "auto"
    for name, args in _args().items():
        assert ops.implementation(name, *args) is ops.TABLE[name].torch


def test_process_wide_and_block(monkeypatch):
    ops.use_backend("triton")
    assert ops.current_backend() == "triton"
    with ops.use_backend("torch"):
        assert ops.current_backend() == "torch"
        with ops.use_backend("triton"):
            assert ops.current_backend() == "triton"
        assert ops.current_backend() == "torch"
    assert ops.current_backend() == "triton"  # the block did not touch the process-wide choice
    ops.use_backend("torch")
    assert ops.current_backend() == "torch"


def test_block_is_local_to_its_thread():
    seen = []
    with ops.use_backend("triton"):
        worker = threading.Thread(target=lambda: seen.append(ops.current_backend()))
        worker.start()
        worker.join()
    assert seen == ["auto"]


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("FASTDIFF_BACKEND", "Triton")
    assert ops.current_backend() == "triton"
    with ops.use_backend("torch"):  # explicit choice beats the environment
        assert ops.current_backend() == "torch"
    monkeypatch.setenv("FASTDIFF_BACKEND", "cuda")
    with pytest.raises(ValueError, match="not one of"):
        ops.current_backend()


def test_forcing_triton_where_it_cannot_run_is_an_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="cannot run here"):
        ops.use_backend("triton")
    monkeypatch.setenv("FASTDIFF_BACKEND", "triton")
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="cannot run here"):
        ops.layer_norm(x)
    monkeypatch.setenv("FASTDIFF_BACKEND", "auto")
    assert ops.implementation("layer_norm", x, None, None, 1e-5) is ops.layer_norm_torch


def test_forced_triton_runs_the_kernels(monkeypatch):
    """With the backend forced, every op dispatches to its Triton launcher, and the custom op really
    launches it (spied), with the same result as the torch entry."""
    calls = []
    table = {name: ops.Op(op.torch, _spy(calls, name, op.triton), op.supported) for name, op in ops._triton_table().items()}
    monkeypatch.setattr(ops, "_triton_table", lambda: table)
    with ops.use_backend("triton"):
        for name, args in _args().items():
            assert ops.implementation(name, *args) is table[name].triton
            out = getattr(ops, name)(*args)
            torch.testing.assert_close(out, ops.TABLE[name].torch(*args), rtol=1e-4, atol=1e-5)
    assert calls == list(TRITON_FNS)


def _spy(calls, name, fn):
    def spy(*args):
        calls.append(name)
        return fn(*args)

    return spy


def test_launchers_are_the_table_entries():
    with ops.use_backend("triton"):
        for name, args in _args().items():
            assert ops.implementation(name, *args) is TRITON_FNS[name]


@pytest.mark.parametrize(
    "name, args",
    [
        ("attention", lambda a: (a[0].double(), a[1].double(), a[2].double(), *a[3:])),  # float64
        ("attention", lambda a: (torch.randn(2, 77, 160)[..., ::2], *a[1:])),  # head dim not contiguous
        ("group_norm", lambda a: (a[0], 3, *a[2:])),  # 20 channels do not split into 3 groups
        ("layer_norm", lambda a: (torch.randn(3, 40, 7).transpose(1, 2), *a[1:])),  # not contiguous
        ("geglu", lambda a: (torch.randn(3, 81),)),  # odd last dim
        ("linear", lambda a: (a[0], a[1].double(), *a[2:])),  # weight of another dtype
        ("linear", lambda a: (a[0][None], *a[1:])),  # 4-D x
        ("group_norm", lambda a: (*a[:6], a[6][:1])),  # shift broadcast over the batch (torch broadcasts)
    ],
)
def test_unsupported_inputs_fall_back_to_torch(name, args):
    call = args(_args()[name])
    with ops.use_backend("triton"):
        assert ops.implementation(name, *call) is ops.TABLE[name].torch


def test_autograd_calls_run_torch():
    x = torch.randn(2, 20, 4, 4, requires_grad=True)
    with ops.use_backend("triton"):
        y = ops.group_norm(x, 4, act="silu")
    y.sum().backward()
    assert x.grad is not None


def test_fake_implementations_on_meta():
    expected = {"attention": (2, 77, 80), "group_norm": (2, 20, 5, 3), "layer_norm": (3, 7, 40), "geglu": (2, 5, 40),
                "linear": (2, 5, 40)}
    for backend in ("torch", "triton"):
        with ops.use_backend(backend):
            for name, args in _args("meta").items():
                out = getattr(ops, name)(*args)
                assert out.device.type == "meta" and tuple(out.shape) == expected[name], name
