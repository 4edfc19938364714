"""The shapes CLIP tokenizer: one token per caption word, a defined unknown token, and a folder
that transformers and diffusers both load."""

import os

import pytest
from transformers import CLIPTokenizer

from bench.shapes import COLORS, SHAPES, VOCABULARY, caption, dataset
from examples.shapes import tokenizer as shapes_tokenizer

ODD_TEXTS = ["a zebra, 42 dogs!", "zzz", "bred", "ÜBER café", "", "a red circle on a blue background " * 4]


@pytest.fixture(scope="module")
def tok():
    return shapes_tokenizer.build_tokenizer()


def word_ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_every_caption_word_is_one_token_that_round_trips(tok):
    ids = {}
    for word in VOCABULARY:
        [ids[word]] = word_ids(tok, word)
        assert tok.convert_ids_to_tokens(ids[word]) == word + "</w>"
        assert tok.decode([ids[word]]) == word
    assert len(set(ids.values())) == len(VOCABULARY)
    assert tok.unk_token_id not in ids.values()


def test_captions_encode_word_by_word_and_decode_back(tok):
    for sample in dataset(50, seed=0):
        ids = tok(sample.caption).input_ids
        words = sample.caption.split()
        assert ids == [tok.bos_token_id] + [word_ids(tok, w)[0] for w in words] + [tok.eos_token_id]
        assert tok.decode(ids, skip_special_tokens=True) == sample.caption


def test_special_tokens(tok):
    specials = [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id]
    assert tok.convert_ids_to_tokens(specials) == ["<|unk|>", "<|startoftext|>", "<|endoftext|>"]
    assert len(set(specials)) == 3 and tok.pad_token_id == tok.eos_token_id
    # <|endoftext|> has the highest id, so pooling at argmax(input_ids) finds it, as with OpenAI's CLIP.
    assert tok.eos_token_id == len(tok) - 1 == max(tok.get_vocab().values())


def test_padding_to_model_max_length_as_sd_pipelines_do(tok):
    assert tok.model_max_length == shapes_tokenizer.MODEL_MAX_LENGTH == 16
    text = caption(SHAPES[0], COLORS[0], COLORS[1])
    batch = tok([text, ""], padding="max_length", max_length=tok.model_max_length, truncation=True)
    for ids in batch.input_ids:
        assert len(ids) == 16 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert sum(batch.attention_mask[0]) == len(text.split()) + 2


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_any_text_encodes_to_valid_ids(tok, text):
    ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert len(ids) == tok.model_max_length and ids[-1] == tok.eos_token_id
    assert all(0 <= i < len(tok) for i in ids)


def test_unknown_characters_map_to_the_unk_token(tok):
    # z, digits and punctuation appear in no caption word: each becomes <|unk|>.
    assert word_ids(tok, "zzz") == [tok.unk_token_id] * 3
    assert word_ids(tok, "42 !") == [tok.unk_token_id] * 3
    # A word spelled only with known letters falls back to known pieces, as BPE does.
    pieces = tok.convert_ids_to_tokens(word_ids(tok, "bred"))
    assert pieces == ["b", "red</w>"]


def test_merges_are_deterministic_and_minimal():
    vocab, merges = shapes_tokenizer.build_vocab()
    assert (vocab, merges) == shapes_tokenizer.build_vocab()
    # Each merge makes one new token: no merge is wasted, and every caption word is a token.
    assert len({a + b for a, b in merges}) == len(merges)
    assert {word + "</w>" for word in VOCABULARY} <= set(vocab)
    assert sorted(vocab.values()) == list(range(len(vocab)))


def test_saved_folder_loads_back_identically(tok, tmp_path):
    folder = str(tmp_path / "tokenizer")
    shapes_tokenizer.main([folder])
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} <= set(os.listdir(folder))
    with open(os.path.join(folder, "merges.txt")) as f:
        assert f.readline().startswith("#version")
    texts = [s.caption for s in dataset(10, seed=1)] + ODD_TEXTS
    expected = [tok(t).input_ids for t in texts]
    loaded = CLIPTokenizer.from_pretrained(folder)
    assert loaded.model_max_length == 16 and loaded.unk_token == "<|unk|>"
    assert [loaded(t).input_ids for t in texts] == expected
    # Without tokenizer.json, the vocab.json + merges.txt pair alone must give the same ids.
    os.remove(os.path.join(folder, "tokenizer.json"))
    assert [CLIPTokenizer.from_pretrained(folder)(t).input_ids for t in texts] == expected


def test_stable_diffusion_pipeline_loads_the_folder(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = str(tmp_path / "pipe")
    tok = shapes_tokenizer.save_tokenizer(os.path.join(folder, "tokenizer"))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=tok.model_max_length, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    text_encoder.save_pretrained(os.path.join(folder, "text_encoder"))
    diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4).save_pretrained(os.path.join(folder, "unet"))
    diffusers.AutoencoderKL(block_out_channels=(4,), norm_num_groups=4, latent_channels=4).save_pretrained(
        os.path.join(folder, "vae"))
    diffusers.DDIMScheduler(clip_sample=False, steps_offset=1).save_pretrained(os.path.join(folder, "scheduler"))
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        f.write('{"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",'
                ' "requires_safety_checker": false, "safety_checker": [null, null],'
                ' "feature_extractor": [null, null], "scheduler": ["diffusers", "DDIMScheduler"],'
                ' "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],'
                ' "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}')
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe.tokenizer, CLIPTokenizer) and pipe.tokenizer.model_max_length == 16
    prompt_embeds, negative_embeds = pipe.encode_prompt("a red circle on a blue background", "cpu", 1, True)
    assert prompt_embeds.shape == negative_embeds.shape == (1, 16, 16)
