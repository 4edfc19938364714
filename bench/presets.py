"""Benchmark presets: real Stable Diffusion architectures with random weights, built once and cached.

A preset is a full Stable Diffusion pipeline folder in Diffusers' format (model_index.json, unet/,
vae/, text_encoder/, tokenizer/, scheduler/). Diffusers builds it from a fixed seed and saves it;
both diffusers and fastdiff then load that very folder, so they always run the same weights.

    tiny   SD1.5's graph (same block types, layers per block, attention layout, hence the same number
           of ops per step) at widths 16/16/32/32 and 8x8 latents: ~28 MFLOP per UNet call, so a step's
           time is almost all host overhead (Python, dispatch, allocation), as on a GPU.
    sd15   Stable Diffusion 1.5: UNet 320/640/1280/1280, CLIP ViT-L/14 text encoder (12 layers, 768).
    sd21   Stable Diffusion 2.1 (768-v): linear projections, head dim 64, upcast attention, v-prediction,
           OpenCLIP ViT-H text encoder (23 layers, 1024, exact GELU).

No download: the tokenizer is a CLIP BPE tokenizer over a few whole words built in code
(model_max_length 77, ids far below the 49408-entry embedding table of the real text encoders).

    >>> folder = pipeline_folder(PRESETS["tiny"])   # built on first use, then reused
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

PROMPT = "a red circle on a blue background"
# Every word the tokenizer knows as one token; anything else becomes <|unk|>.
WORDS = ("a", "red", "blue", "green", "circle", "square", "triangle", "on", "background", "photo", "of")
SEED = 0
# Bumped whenever the way a folder is built changes, so stale caches are never reused.
FORMAT = 1
CACHE_ENV = "FASTDIFF_BENCH_CACHE"


def _sd_unet(**overrides) -> dict:
    """SD 1.x UNet2DConditionModel config (runwayml/stable-diffusion-v1-5 unet/config.json)."""
    config = dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), norm_num_groups=32, cross_attention_dim=768,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    return {**config, **overrides}


def _sd_vae(**overrides) -> dict:
    """SD AutoencoderKL config: four 2x levels (8x downsampling), 4 latent channels."""
    config = dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215,
    )
    return {**config, **overrides}


def _clip_text(**overrides) -> dict:
    """CLIPTextConfig of SD1.x's text encoder (CLIP ViT-L/14); token ids come from the tokenizer."""
    config = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
    return {**config, **overrides}


# SD's training schedule; PNDM (PLMS) is what SD1.x ships with, DDIM with v-prediction for SD2.1.
_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
              steps_offset=1, set_alpha_to_one=False)


@dataclass(frozen=True)
class Preset:
    name: str
    unet: dict
    vae: dict
    text_encoder: dict
    scheduler: tuple[str, dict]
    res: int  # default image side in pixels
    steps: int = 20
    notes: str = field(default="", compare=False)

    def digest(self) -> str:
        blob = json.dumps({**asdict(self), "notes": None, "format": FORMAT, "seed": SEED}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


PRESETS = {
    "tiny": Preset(
        "tiny",
        # One head per attention layer, so head dims are 16 and 32: sizes the Triton kernels take on CUDA.
        unet=_sd_unet(sample_size=8, block_out_channels=(16, 16, 32, 32), norm_num_groups=8, cross_attention_dim=32,
                      attention_head_dim=1),
        vae=_sd_vae(block_out_channels=(8, 8, 16, 16), norm_num_groups=4, layers_per_block=1, sample_size=64),
        text_encoder=_clip_text(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, projection_dim=32),
        scheduler=("PNDMScheduler", dict(_BETAS, skip_prk_steps=True)),
        res=64, steps=20,
        notes="SD1.5's blocks and op count per step at widths 16/16/32/32: ~28 MFLOP per UNet call",
    ),
    "sd15": Preset(
        "sd15", unet=_sd_unet(), vae=_sd_vae(), text_encoder=_clip_text(),
        scheduler=("PNDMScheduler", dict(_BETAS, skip_prk_steps=True)), res=512, steps=20,
        notes="Stable Diffusion 1.5 architecture, random weights",
    ),
    "sd21": Preset(
        "sd21",
        unet=_sd_unet(sample_size=96, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                      use_linear_projection=True, upcast_attention=True),
        vae=_sd_vae(sample_size=768),
        text_encoder=_clip_text(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                num_attention_heads=16, hidden_act="gelu", projection_dim=512),
        scheduler=("DDIMScheduler", dict(_BETAS, clip_sample=False, prediction_type="v_prediction")), res=768, steps=20,
        notes="Stable Diffusion 2.1 (768-v) architecture, random weights",
    ),
}


def cache_root() -> Path:
    """$FASTDIFF_BENCH_CACHE, else bench/.cache next to this file (gitignored)."""
    return Path(os.environ.get(CACHE_ENV) or Path(__file__).resolve().parent / ".cache")


def pipeline_folder(preset: Preset, root: Path | None = None) -> Path:
    """The preset's pipeline folder, built on first use. The name carries a digest of the configs, so a
    changed preset builds a new folder instead of silently reusing old weights."""
    folder = (root or cache_root()) / f"{preset.name}-{preset.digest()}"
    if (folder / "model_index.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: a concurrent or interrupted build never leaves half a folder.
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build_pipeline(preset).save_pretrained(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first; its folder has the same weights
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_pipeline(preset: Preset):
    """A diffusers StableDiffusionPipeline with the preset's architecture and seeded random weights."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    if len(tokenizer) > preset.text_encoder["vocab_size"]:
        raise ValueError(f"{preset.name}: the tokenizer has {len(tokenizer)} ids, more than the text encoder's vocab_size")
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    # One seed per component, so changing one config does not change the others' weights.
    torch.manual_seed(SEED)
    unet = diffusers.UNet2DConditionModel(**preset.unet)
    torch.manual_seed(SEED + 1)
    vae = diffusers.AutoencoderKL(**preset.vae)
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**preset.text_encoder, **ids))
    scheduler_name, scheduler_config = preset.scheduler
    scheduler = getattr(diffusers, scheduler_name)(**scheduler_config)
    return diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)


def build_tokenizer(words=WORDS, max_length: int = 77):
    """A CLIPTokenizer whose vocabulary is `words`, each one token: BPE merges that join every word's
    characters left to right (the last one carrying CLIP's end-of-word marker </w>)."""
    from transformers import CLIPTokenizer

    tokens: dict[str, None] = {}
    merges: dict[tuple[str, str], None] = {}
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        tokens.update(dict.fromkeys(pieces))
        while len(pieces) > 1:
            merges[(pieces[0], pieces[1])] = None
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            tokens[pieces[0]] = None
    specials = ["<|unk|>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate([*tokens, *specials])}
    return CLIPTokenizer(vocab=vocab, merges=list(merges), unk_token="<|unk|>", bos_token="<|startoftext|>",
                         eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=max_length)
