"""Every benchmark here runs on the CPU with one torch thread unless BENCH_THREADS says otherwise:
small ops on a shared machine time more steadily without intra-op thread wake-ups."""

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)
