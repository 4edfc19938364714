"""Size the shapes model before training it: parameters, fp32 megabytes and seconds per training
step (forward, backward, AdamW) at batch 64 for candidate VAE / text encoder / UNet configurations.

It builds diffusers' reference classes (a test-only dependency, used here for sizing only; the
training scripts use fastdiff's models, which take the same configs). Each figure is the best of a
few steps, in wall seconds and in CPU seconds of this process: on a shared machine the wall time
swings with other people's load, the CPU time much less, so size from the CPU time measured with
--threads 1; two idle cores (--threads 2) take between half and all of it, depending on the layer.

    python -m examples.shapes.probe_sizes [--batch 64] [--steps 3] [--threads 1] [--only vae|text|unet]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from examples.shapes.tokenizer import build_tokenizer

# Candidates, smallest first. 64x64x3 -> 8x8x4 needs three 2x downsamples, i.e. four VAE blocks.
VAE_CONFIGS = {
    "vae-xs": dict(block_out_channels=(8, 16, 32, 64), layers_per_block=1, norm_num_groups=8),
    "vae-s": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=16),
}
TEXT_CONFIGS = {
    "text-64": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
    "text-128": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4),
}
_CROSS_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_CROSS_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
UNET_CONFIGS = {
    "unet-xs": dict(block_out_channels=(32, 64, 128), layers_per_block=1),
    "unet-s": dict(block_out_channels=(64, 128, 128), layers_per_block=1),
}
TOKENIZER = build_tokenizer()
TEXT_LENGTH, VOCAB_SIZE = TOKENIZER.model_max_length, len(TOKENIZER)


def build_vae(cfg):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **cfg)


def build_text(cfg):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, max_position_embeddings=TEXT_LENGTH, bos_token_id=TOKENIZER.bos_token_id,
        eos_token_id=TOKENIZER.eos_token_id, pad_token_id=TOKENIZER.pad_token_id, **cfg))


def build_unet(cfg, cross_attention_dim):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, down_block_types=_CROSS_DOWN,
                                up_block_types=_CROSS_UP, cross_attention_dim=cross_attention_dim,
                                attention_head_dim=8, norm_num_groups=32, **cfg)


def vae_loss(vae, batch):
    posterior = vae.encode(torch.rand(batch, 3, 64, 64) * 2 - 1).latent_dist
    image = torch.rand(batch, 3, 64, 64) * 2 - 1
    return F.mse_loss(vae.decode(posterior.sample()).sample, image) + 1e-6 * posterior.kl().mean()


def unet_loss(unet, text, batch):
    # Text encoder and UNet train together: the diffusion loss reaches the text encoder too.
    ids = torch.randint(0, VOCAB_SIZE, (batch, TEXT_LENGTH))
    context = text(ids).last_hidden_state
    latents, t = torch.randn(batch, 4, 8, 8), torch.randint(0, 1000, (batch,))
    return F.mse_loss(unet(latents, t, encoder_hidden_states=context).sample, torch.randn_like(latents))


def seconds_per_step(params, loss_fn, steps):
    """(wall, cpu) seconds of the fastest training step."""
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    wall = cpu = float("inf")
    for _ in range(steps + 1):  # the first step warms up allocators and oneDNN kernels
        start, start_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def count(*models):
    n = sum(p.numel() for m in models for p in m.parameters())
    return n, n * 4 / 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", choices=("vae", "text", "unet"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch}")
    if args.only in (None, "vae"):
        for name, cfg in VAE_CONFIGS.items():
            vae = build_vae(cfg)
            wall, cpu = seconds_per_step(vae.parameters(), lambda: vae_loss(vae, args.batch), args.steps)
            n, mb = count(vae)
            print(f"{name:9} params {n / 1e6:6.2f} M {mb:5.1f} MB  step {wall:6.2f} s wall {cpu:6.2f} s cpu")
    if args.only in (None, "text"):
        for name, cfg in TEXT_CONFIGS.items():
            n, mb = count(build_text(cfg))
            print(f"{name:9} params {n / 1e6:6.2f} M {mb:5.1f} MB")
    if args.only in (None, "unet"):
        for text_name, text_cfg in TEXT_CONFIGS.items():
            for name, cfg in UNET_CONFIGS.items():
                text, unet = build_text(text_cfg), build_unet(cfg, text_cfg["hidden_size"])
                params = list(text.parameters()) + list(unet.parameters())
                wall, cpu = seconds_per_step(params, lambda: unet_loss(unet, text, args.batch), args.steps)
                n, mb = count(unet)
                print(f"{name:9} params {n / 1e6:6.2f} M {mb:5.1f} MB  + {text_name:8}  step {wall:6.2f} s wall"
                      f" {cpu:6.2f} s cpu")


if __name__ == "__main__":
    main()
