"""Train the shapes text encoder and UNet together on SD's diffusion loss, in the trained VAE's latents.

Epsilon prediction under SD's scaled-linear schedule (0.00085-0.012, 1000 steps); one caption
in ten is dropped to "" so the model also learns the unconditional prediction that classifier-free
guidance needs. Two changes from plain SD training, measured after 3000 steps (20 DPM++ 2M steps,
guidance 7.5, 42 prompts): offset noise 0.1 plus Min-SNR-5 loss weighting lift prompt adherence
from 48% to 98% (with SD's schedule the noise's per-channel mean otherwise decides the background
colour). The training images are rendered and encoded once (WORK/latents.pt); each step
samples their posterior. Checkpoints to WORK/unet.pt, resumes from it, saves WORK/unet and
WORK/text_encoder at the end.

    python -m examples.shapes.train_unet --work /tmp/shapes [--steps 8000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from bench.shapes import dataset, to_tensor
from examples.shapes.tokenizer import build_tokenizer
from examples.shapes.training import (ALL_CAPTIONS, SCHEDULER_CONFIG, Trainer, batch_seed, build_text_encoder,
                                      build_unet, set_threads)

SEED = 2
DROP_CAPTION = 0.1


@torch.no_grad()
def encode_dataset(vae, n: int, seed: int, chunk: int = 250) -> dict:
    """Posterior mean and std of `n` rendered images, and each image's caption index (-1 never occurs)."""
    samples = dataset(n, seed)
    index = {text: i for i, text in enumerate(ALL_CAPTIONS)}
    means, stds = [], []
    for i in range(0, n, chunk):
        posterior = vae.encode(to_tensor([s.image for s in samples[i:i + chunk]])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return {"mean": torch.cat(means), "std": torch.cat(stds),
            "caption": torch.tensor([index[s.caption] for s in samples])}


def caption_ids() -> torch.Tensor:
    """Token ids of every caption, then of "" (the unconditional prompt), padded as SD pipelines pad."""
    tok = build_tokenizer()
    return tok(ALL_CAPTIONS + [""], padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def diffusion_loss(unet, text_encoder, scheduler, data, ids, scale, step, seed, batch, offset=0.0, min_snr=0.0):
    generator = torch.Generator().manual_seed(batch_seed(seed, step))
    pick = torch.randint(0, len(data["caption"]), (batch,), generator=generator)
    eps = torch.randn(batch, *data["mean"].shape[1:], generator=generator)
    latents = (data["mean"][pick] + data["std"][pick] * eps) * scale
    captions = data["caption"][pick]
    dropped = torch.rand(batch, generator=generator) < DROP_CAPTION
    captions = torch.where(dropped, len(ALL_CAPTIONS), captions)  # the last row of `ids` is ""
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    # offset noise: a per-channel constant on top, so the model cannot read the mean colour off the noise
    noise = noise + offset * torch.randn(batch, noise.shape[1], 1, 1, generator=generator)
    noisy = scheduler.add_noise(latents, noise, t)
    context = text_encoder(ids[captions])[0]
    error = (unet(noisy, t, encoder_hidden_states=context).sample - noise).pow(2).mean(dim=(1, 2, 3))
    if min_snr:  # Min-SNR-gamma weighting for epsilon prediction: min(SNR, gamma) / SNR
        alpha_bar = scheduler.alphas_cumprod[t]
        snr = alpha_bar / (1 - alpha_bar)
        error = error * snr.clamp(max=min_snr) / snr
    return error.mean()


def main(argv=None):
    import fastdiff

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder with WORK/vae (from train_vae); outputs go there too")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--images", type=int, default=20_000, help="size of the encoded training set")
    parser.add_argument("--offset-noise", type=float, default=0.1)
    parser.add_argument("--min-snr", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(SEED)
    vae = fastdiff.AutoencoderKL.from_pretrained(os.path.join(args.work, "vae")).eval()
    cache = os.path.join(args.work, "latents.pt")
    if not os.path.exists(cache):
        start = time.perf_counter()
        torch.save(encode_dataset(vae, args.images, SEED), cache)
        print(f"encoded {args.images} images in {time.perf_counter() - start:.0f} s", flush=True)
    data, ids = torch.load(cache, weights_only=True), caption_ids()
    scheduler = fastdiff.DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    unet, text_encoder = build_unet(), build_text_encoder()
    trainer = Trainer({"unet": unet, "text_encoder": text_encoder}, os.path.join(args.work, "unet.pt"),
                      args.steps, args.lr)
    for step in trainer:
        trainer.update(diffusion_loss(unet, text_encoder, scheduler, data, ids, vae.config.scaling_factor, step,
                                      SEED, args.batch,
                                      args.offset_noise, args.min_snr))
    unet.save_pretrained(os.path.join(args.work, "unet"))
    text_encoder.save_pretrained(os.path.join(args.work, "text_encoder"))
    print(f"trained {trainer.step} steps in {trainer.seconds / 60:.1f} min wall, {trainer.cpu_seconds / 60:.1f} min cpu;"
          f" saved {args.work}/unet and {args.work}/text_encoder", flush=True)


if __name__ == "__main__":
    main()
