"""Train the shapes AutoencoderKL (64x64x3 -> 8x8x4) on freshly rendered batches.

Loss: L1 on pixels + a tiny KL term, as SD's VAE. Measured at 3000 steps (batch 32): lr 3e-3 gives
97.6% evaluator accuracy on reconstructions, lr 1e-3 83.8%, lr 6e-3 stalls; an extra L1 on image
differences (meant to keep corners sharp) made lr 1e-3 worse (60.2%). Checkpoints to
WORK/vae.pt and resumes from it; at the end prints the evaluator's accuracy on reconstructions,
measures the latent scaling_factor and saves the model to WORK/vae.

    python -m examples.shapes.train_vae --work /tmp/shapes [--steps 3000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from PIL import Image

from bench.shapes import dataset, score, to_tensor
from examples.shapes.training import Trainer, build_vae, image_batch, set_threads

SEED = 1
EVAL_SEED = 999_999


def vae_loss(vae, images: torch.Tensor, kl: float, generator: torch.Generator) -> torch.Tensor:
    posterior = vae.encode(images).latent_dist
    recon = vae.decode(posterior.sample(generator)).sample
    return F.l1_loss(recon, images) + kl * posterior.kl().mean()


@torch.no_grad()
def reconstruction_accuracy(vae, n: int = 1000, seed: int = EVAL_SEED, batch: int = 100) -> float:
    """Share of held-out renders whose reconstruction the evaluator reads as their caption."""
    samples, ok = dataset(n, seed), 0
    for i in range(0, n, batch):
        chunk = samples[i:i + batch]
        recon = vae.decode(vae.encode(to_tensor([s.image for s in chunk])).latent_dist.mode()).sample
        pixels = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        ok += sum(score(Image.fromarray(p), s.caption)["ok"] for p, s in zip(pixels, chunk))
    return ok / n


@torch.no_grad()
def latent_scale(vae, n: int = 1000, seed: int = EVAL_SEED + 1) -> float:
    """SD's scaling_factor: 1 / std of posterior samples, so the UNet sees unit-variance latents."""
    images = to_tensor([s.image for s in dataset(n, seed)])
    latents = torch.cat([vae.encode(chunk).latent_dist.sample(torch.Generator().manual_seed(0))
                         for chunk in images.split(250)])
    return 1.0 / latents.std().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder for WORK/vae.pt (checkpoint) and WORK/vae (model)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--kl", type=float, default=1e-6)
    parser.add_argument("--eval-images", type=int, default=1000, help="held-out renders for accuracy and scale")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(SEED)
    vae = build_vae()
    trainer = Trainer({"vae": vae}, os.path.join(args.work, "vae.pt"), args.steps, args.lr)
    for step in trainer:
        images, _ = image_batch(SEED, step, args.batch)
        generator = torch.Generator().manual_seed(step)
        trainer.update(vae_loss(vae, images, args.kl, generator))
    vae.eval()
    print(f"trained {trainer.step} steps in {trainer.seconds / 60:.1f} min wall, {trainer.cpu_seconds / 60:.1f} min cpu;"
          f" evaluator accuracy on reconstructions {reconstruction_accuracy(vae, args.eval_images):.1%}", flush=True)
    vae.register_to_config(scaling_factor=round(latent_scale(vae, args.eval_images), 5))
    vae.save_pretrained(os.path.join(args.work, "vae"))
    print(f"saved {args.work}/vae, scaling_factor {vae.config.scaling_factor}")


if __name__ == "__main__":
    main()
