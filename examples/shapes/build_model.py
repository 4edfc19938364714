"""Assemble the trained shapes components into a Stable Diffusion pipeline folder (Diffusers layout).

Reads WORK/vae (train_vae; its config carries the measured scaling_factor), WORK/text_encoder and
WORK/unet (train_unet); adds the tokenizer and a DPM++ 2M scheduler on SD's noise schedule; no
safety checker. The default output is the built-in model's place in the package.

    python -m examples.shapes.build_model --work /tmp/shapes [--out fastdiff/assets/shapes]
"""

from __future__ import annotations

import argparse
import os
import shutil

from examples.shapes.tokenizer import build_tokenizer, save_tokenizer
from examples.shapes.training import SCHEDULER_CONFIG

DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fastdiff", "assets", "shapes")


def build_pipeline(work: str):
    from transformers import CLIPTextModel

    import fastdiff

    # DPM++ 2M: SD's usual sampler, good images in 20-25 steps (the CLI's default is 25).
    # from_config keeps DDIM's clip_sample / set_alpha_to_one in the saved config, as SD's folders do,
    # so a DDIMScheduler built from it later does not fall back to clipping latents.
    scheduler = fastdiff.DPMSolverMultistepScheduler.from_config(SCHEDULER_CONFIG, algorithm_type="dpmsolver++")
    return fastdiff.StableDiffusionPipeline(
        vae=fastdiff.AutoencoderKL.from_pretrained(os.path.join(work, "vae")),
        text_encoder=CLIPTextModel.from_pretrained(os.path.join(work, "text_encoder")),
        tokenizer=build_tokenizer(), unet=fastdiff.UNet2DConditionModel.from_pretrained(os.path.join(work, "unet")),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder holding vae/, text_encoder/ and unet/")
    parser.add_argument("--out", default=os.path.normpath(DEFAULT_OUT))
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    build_pipeline(args.work).save_pretrained(args.out)
    save_tokenizer(os.path.join(args.out, "tokenizer"))  # adds vocab.json / merges.txt
    total = 0
    for root, _, files in os.walk(args.out):
        for name in sorted(files):
            size = os.path.getsize(os.path.join(root, name))
            total += size
            print(f"{os.path.relpath(os.path.join(root, name), args.out):40} {size / 1e6:7.2f} MB")
    print(f"{'total':40} {total / 1e6:7.2f} MB -> {args.out}")


if __name__ == "__main__":
    main()
