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


WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "background", "cat", "dog"]


def tiny_tokenizer(max_length: int = 12):
    """A CLIP tokenizer over a few whole words (each word one token), built in code."""
    from transformers import CLIPTokenizer

    chars = sorted({c for w in WORDS for c in w[:-1]} | {w[-1] + "</w>" for w in WORDS})
    merges, tokens = [], list(chars)
    for w in WORDS:  # build each word left to right: ((c1 c2) c3) ... </w>
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1]] + parts[2:]
            tokens.append(parts[0])
    tokens = list(dict.fromkeys(tokens)) + ["<|unk|>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab=vocab, merges=merges, unk_token="<|unk|>", bos_token="<|startoftext|>",
                         eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=max_length)


def tiny_sd_components(in_channels=4, v_prediction=False, seed=0):
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=12, projection_dim=16,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
        use_linear_projection=v_prediction, upcast_attention=v_prediction,
    )
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
                                        prediction_type="v_prediction" if v_prediction else "epsilon")
    return dict(unet=perturb(unet, seed), vae=perturb(vae, seed + 1), text_encoder=CLIPTextModel(text_config),
                tokenizer=tokenizer, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def _save_sd(folder, pipeline_class_name, **kwargs):
    import diffusers

    getattr(diffusers, pipeline_class_name)(**tiny_sd_components(**kwargs)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    return _save_sd(tmp_path_factory.mktemp("sd"), "StableDiffusionPipeline")


@pytest.fixture(scope="session")
def sd2_folder(tmp_path_factory):
    return _save_sd(tmp_path_factory.mktemp("sd2"), "StableDiffusionPipeline", v_prediction=True)


@pytest.fixture(scope="session")
def inpaint_folder(tmp_path_factory):
    return _save_sd(tmp_path_factory.mktemp("sd_inpaint"), "StableDiffusionInpaintPipeline", in_channels=9)
