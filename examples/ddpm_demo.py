"""Build a small random-weight DDPM pipeline folder, load it back through DiffusionPipeline and
write images. The weights are random, so the images are noise-like: this shows the full
load -> denoise -> save path working, not image quality (the trained built-in model comes later)."""

import argparse
import pathlib

import torch

import fastdiff


def build(folder: pathlib.Path):
    torch.manual_seed(0)
    unet = fastdiff.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=8,
                                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    scheduler = fastdiff.DDPMScheduler(num_train_timesteps=1000)
    fastdiff.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="images", help="folder for the PNGs")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--num-images", type=int, default=4)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    folder = out / "ddpm-random"
    build(folder)
    pipe = fastdiff.DiffusionPipeline.from_pretrained(folder)
    images = pipe(batch_size=args.num_images, num_inference_steps=args.steps,
                  generator=torch.Generator().manual_seed(0)).images
    for i, image in enumerate(images):
        image.save(out / f"ddpm-{i}.png")
    print(f"wrote {len(images)} images to {out}/ (random weights: noise-like by design)")


if __name__ == "__main__":
    main()
