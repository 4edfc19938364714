"""Scheduler tests run single-threaded: the tensors are tiny, and on a shared 2-core machine two OpenMP
threads spin against other processes and make each step 10-100x slower."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
