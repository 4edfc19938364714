"""VQModel against diffusers: quantised forward, encode, decode with and without quantisation, codebook
lookup, save -> load both ways, low precision, refused keys."""

import diffusers
import pytest
import torch

import fastdiff
from fastdiff.models import UnsupportedConfigError

from .parity import assert_close, assert_low_precision, load_back_into_diffusers, reference_model

BASE = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, latent_channels=3,
            num_vq_embeddings=16, sample_size=16,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
CONFIGS = {
    "ldm_sr": BASE,  # CompVis/ldm-super-resolution-4x-openimages' vqvae, scaled down
    "embed_dim": dict(BASE, vq_embed_dim=4, mid_block_add_attention=False, lookup_from_codebook=True,
                      block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                      up_block_types=("UpDecoderBlock2D",) * 3),
}


def _images(batch=2, size=16):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, tmp_path_factory):
    config = CONFIGS[request.param]
    # A wider codebook spread than diffusers' U(-1/n, 1/n) init, so nearest-entry choices are not degenerate.
    ref = reference_model(diffusers.VQModel, config)
    with torch.no_grad():
        ref.quantize.embedding.weight.normal_(generator=torch.Generator().manual_seed(2))
    folder = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(folder)
    return config, ref, folder, fastdiff.VQModel.from_pretrained(folder)


def test_forward_encode_decode_match(saved):
    config, ref, folder, model = saved
    x = _images()
    with torch.no_grad():
        h_ref, h = ref.encode(x).latents, model.encode(x).latents
        assert_close(h, h_ref, what="encode")
        want, got = ref(x), model(x)
        assert_close(got.sample, want.sample, what="forward")
        assert_close(got.commit_loss, want.commit_loss, what="commit_loss")
        _, _, (_, _, idx_ref) = ref.quantize(h_ref)
        _, _, (_, _, idx) = model.quantize(h_ref)
        assert torch.equal(idx, idx_ref) and idx.unique().numel() > 1
        assert_close(model.decode(h_ref, force_not_quantize=True).sample if not config.get("lookup_from_codebook")
                     else model.decode(h_ref).sample,
                     ref.decode(h_ref, force_not_quantize=True).sample if not config.get("lookup_from_codebook")
                     else ref.decode(h_ref).sample, what="decode")
        sample, loss = model(x, return_dict=False)
        assert torch.equal(sample, got.sample) and torch.equal(loss, got.commit_loss)


def test_codebook_lookup(saved):
    config, ref, folder, model = saved
    if not config.get("lookup_from_codebook"):
        return
    dim = config.get("vq_embed_dim") or config["latent_channels"]
    indices = torch.randint(0, config["num_vq_embeddings"], (2 * 4 * 4,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model.decode(indices, force_not_quantize=True, shape=(2, 4, 4, dim))
        want = ref.decode(indices, force_not_quantize=True, shape=(2, 4, 4, dim))
    assert_close(got.sample, want.sample, what="decode from codebook indices")
    assert torch.equal(got.commit_loss, want.commit_loss)


def test_save_roundtrip_into_diffusers(saved, tmp_path):
    config, ref, folder, model = saved
    back = load_back_into_diffusers(model, ref, tmp_path)
    with torch.no_grad():
        assert_close(model(_images()).sample, back(_images()).sample)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(saved, dtype):
    """Quantisation makes the forward discontinuous, so precision is checked on encode and on decode of the
    float32 latents; the nearest-entry search runs in float32 (torch.cdist has no CPU half kernel)."""
    config, ref, folder, _ = saved
    model = fastdiff.VQModel.from_pretrained(folder, dtype=dtype)
    x = _images()
    with torch.no_grad():
        h = ref.encode(x).latents
        assert_low_precision(model.encode(x.to(dtype)).latents, h)
        assert_low_precision(model.decode(h.to(dtype)).sample, ref.decode(h).sample)


def test_spatial_norm_is_refused():
    with pytest.raises(UnsupportedConfigError, match="norm_type"):
        fastdiff.VQModel(**dict(BASE, norm_type="spatial"))


def test_quantizer_losses_have_diffusers_gradients(saved):
    """The legacy / beta weighting only shows in the gradients (both terms have the same value)."""
    config, ref, folder, model = saved
    with torch.no_grad():
        h = ref.encode(_images()).latents
    grads = []
    for q in (ref.quantize, model.quantize):
        q.zero_grad()
        z = h.clone().requires_grad_()
        z_q, loss, _ = q(z)
        (loss + z_q.square().sum()).backward()
        grads.append((z.grad, q.embedding.weight.grad))
    assert_close(grads[1][0], grads[0][0], what="d/dz")
    assert_close(grads[1][1], grads[0][1], what="d/dcodebook")
