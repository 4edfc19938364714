"""Shared test setup: deterministic torch, quiet progress bars, small thread count."""

import os

import pytest
import torch

# Kernel tests run Triton's interpreter. @triton.jit and triton.language read this when they are
# first imported, and bench/ (collected before tests/kernels) imports Triton, so it is set here,
# before anything else. The "auto" backend still picks torch for CPU tensors.
os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# tiny tensors: one thread avoids oversubscription when the 2 cores are shared (CI runs alone, but
# per-op work here is far too small for a second thread to pay off)
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Each test module starts single-threaded, whatever an earlier module set (the models and schedulers are
    tiny: on a shared 2-core machine a second OpenMP thread spins against other processes, 10-100x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
