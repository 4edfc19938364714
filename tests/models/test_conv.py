"""The prepacked CPU convolution: same results as F.conv2d, rebuilt when the weight changes, invisible to
state_dict / save_pretrained, bypassed for autograd and when switched off."""

import pytest
import torch
import torch.nn.functional as F

import fastdiff
from fastdiff.models import conv as conv_module
from fastdiff.models.conv import Conv2d

from .parity import FP32_TOL, LOW_TOL, assert_close, assert_same_state_dict

pytestmark = pytest.mark.skipif(not conv_module._available(), reason="this torch has no oneDNN (mkldnn) CPU ops")


def _conv(**kwargs):
    torch.manual_seed(0)
    return Conv2d(16, 24, **{"kernel_size": 3, "padding": 1, **kwargs})


@pytest.mark.parametrize("kwargs", [dict(), dict(kernel_size=1, padding=0), dict(stride=2, padding=0),
                                    dict(kernel_size=5, padding=2, bias=False)])
@pytest.mark.parametrize("shape", [(2, 16, 12, 12), (1, 16, 7, 5)])
def test_matches_f_conv2d_and_packs(kwargs, shape):
    conv = _conv(**kwargs)
    x = torch.randn(shape)
    with torch.no_grad():
        got = conv(x)
        want = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    assert conv._packed is not None and conv._packed.is_mkldnn
    assert_close(got, want, FP32_TOL)


def test_bfloat16():
    conv = _conv().to(torch.bfloat16)
    x = torch.randn(2, 16, 8, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        got = conv(x)
    assert got.dtype == torch.bfloat16 and conv._packed is not None and conv._packed.dtype == torch.bfloat16
    assert_close(got.float(), F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), padding=1), LOW_TOL[torch.bfloat16])


def test_rebuilt_after_weight_changes():
    conv, x = _conv(), torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        conv(x)
        conv.weight.mul_(2)  # in place: the version counter moves
        assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
        conv.to(torch.float64).to(torch.float32)  # new storage
        assert conv._packed is None
        assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))


def test_autograd_and_switch_use_the_plain_path():
    conv, x = _conv(), torch.randn(1, 16, 8, 8, requires_grad=True)
    conv(x).sum().backward()
    assert conv._packed is None and conv.weight.grad is not None and x.grad is not None
    conv_module.set_cpu_prepack(False)
    try:
        with torch.no_grad():
            conv(x)
        assert conv._packed is None
    finally:
        conv_module.set_cpu_prepack(True)


def test_state_dict_and_saved_weights_unchanged(tmp_path):
    vae = fastdiff.AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=4, sample_size=16,
                                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    with torch.no_grad():
        vae(torch.randn(1, 3, 16, 16))
    assert any(m._packed is not None for m in vae.modules() if isinstance(m, Conv2d))
    assert_same_state_dict(vae.state_dict(), before)
    vae.save_pretrained(tmp_path)
    loaded = fastdiff.AutoencoderKL.from_pretrained(tmp_path)
    assert_same_state_dict(loaded.state_dict(), before)
    assert not any(m._packed is not None for m in loaded.modules() if isinstance(m, Conv2d))  # lazy: none at load
