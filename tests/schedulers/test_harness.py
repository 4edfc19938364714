"""The sync guard itself must catch what it claims to catch."""

import pytest
import torch

from .harness import HostSyncError, no_host_sync


@pytest.mark.parametrize(
    "sync",
    [
        lambda x: x[1].item(),
        lambda x: x.tolist(),
        lambda x: x.numpy(),
        lambda x: bool(x[0] > 0),
        lambda x: x.nonzero(),
        lambda x: x[torch.tensor(1)],  # a 0-dim index tensor is read on the host
        lambda x: float(x[0]),
    ],
)
def test_guard_catches_syncs(sync):
    x = torch.arange(4.0)
    with pytest.raises(HostSyncError), no_host_sync():
        sync(x)


def test_guard_allows_device_work():
    x = torch.arange(4.0)
    with no_host_sync():
        y = x.index_select(0, torch.tensor([1])) * 2 + x.sum()
    assert y.shape == (1,)
