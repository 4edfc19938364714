"""Tiny pipelines built by diffusers with random weights, saved once per session."""

import pytest
import torch


def perturb(module, seed: int = 0):
    """Every parameter gets fresh seeded noise, so zero-initialised layers cannot hide a bug."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def tiny_ddpm_unet():
    import diffusers

    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    return perturb(unet)


@pytest.fixture(scope="session")
def ddpm_folder(tmp_path_factory):
    import diffusers

    folder = tmp_path_factory.mktemp("ddpm")
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    diffusers.DDPMPipeline(unet=tiny_ddpm_unet(), scheduler=scheduler).save_pretrained(folder)
    return folder
