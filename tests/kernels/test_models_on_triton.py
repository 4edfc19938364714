"""Tiny UNet2DConditionModel and AutoencoderKL end to end on the Triton backend (interpreter) vs torch.

Every GroupNorm(+SiLU, + time embedding), LayerNorm, fused linear (GEGLU, + residual) and attention
call of the forward pass goes through the kernels; the spy checks they really ran, and the outputs
must agree with the torch backend to fp32 roundoff (the kernels only change summation order).
"""

import pytest
import torch

import fastdiff
from fastdiff import ops

UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 40), layers_per_block=1,
    norm_num_groups=8, cross_attention_dim=24, attention_head_dim=(2, 4),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
VAE = dict(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
           norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
TOL = 1e-4  # max |triton - torch| / max |torch|, fp32


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts launches per op by wrapping the Triton entries of the ops table."""
    calls = {}
    table = {name: ops.Op(op.torch, _counting(calls, name, op.triton), op.supported)
             for name, op in ops._triton_table().items()}
    monkeypatch.setattr(ops, "_triton_table", lambda: table)
    return calls


def _counting(calls, name, fn):
    def run(*args):
        calls[name] = calls.get(name, 0) + 1
        return fn(*args)

    return run


def _random_model(cls, config):
    torch.manual_seed(0)
    model = cls(**config).eval()
    with torch.no_grad():  # perturb every parameter so zero/one inits cannot hide a wrong kernel
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _both_backends(forward):
    with torch.no_grad():
        with ops.use_backend("torch"):
            expected = forward()
        with ops.use_backend("triton"):
            actual = forward()
    assert torch.isfinite(actual).all()
    err = ((actual - expected).abs().max() / expected.abs().max()).item()
    assert err < TOL, err


def test_unet_2d_condition(kernel_calls):
    model = _random_model(fastdiff.UNet2DConditionModel, UNET)
    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 24)
    _both_backends(lambda: model(sample, torch.tensor([10, 999]), context).sample)
    assert set(kernel_calls) == {"attention", "group_norm", "layer_norm", "linear"}, kernel_calls


def test_autoencoder_kl(kernel_calls):
    model = _random_model(fastdiff.AutoencoderKL, VAE)
    image = torch.randn(1, 3, 16, 16)
    _both_backends(lambda: model.decode(model.encode(image).latent_dist.mode()).sample)
    assert {"attention", "group_norm", "linear"} <= set(kernel_calls), kernel_calls
