"""Model-card metadata follows the Hub's conventions (no server)."""

import argparse

from huggingface_hub import ModelCard
from PIL import Image

import custom_pipelines
from custom_pipelines.hub.cards import base_model_of, pipeline_tag
from custom_pipelines.training.reporting import ModelCardInfo, write_model_card


def test_every_public_pipeline_has_a_hub_task():
    pipelines = [name for name in custom_pipelines.__all__ if name.endswith("Pipeline")]
    assert pipelines and all(pipeline_tag(name) is not None for name in pipelines)


def test_base_model_is_a_hub_repo_id_only(tmp_path):
    assert base_model_of("acme/ddpm-digits") == "acme/ddpm-digits"
    assert base_model_of(tmp_path) is None and base_model_of("runs/../x/y") is None and base_model_of(None) is None
    assert base_model_of("ddpm-digits-16") is None  # a hub_configs variant name: a size, not a parent model


def test_training_card_metadata_and_the_latest_sample_grid(tmp_path):
    (tmp_path / "samples").mkdir()
    for step in (3, 6):
        Image.new("L", (8, 8)).save(tmp_path / "samples" / f"step_{step:06d}.png")
    args = argparse.Namespace(
        dataset_name="digits", hub_model_id="me/cfg", pretrained_model_name_or_path="acme/ddpm-digits", hub_token="x"
    )
    info = ModelCardInfo("cfg", "ClassConditionalDiffusionPipeline", "Fine-tuned.")
    card = ModelCard.load(write_model_card(str(tmp_path), info, args))
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "unconditional-image-generation"
    assert card.data.base_model == "acme/ddpm-digits" and card.data.datasets == ["digits"]
    assert card.data.license == "apache-2.0" and {"custom_pipelines", "diffusers", "cfg"} <= set(card.data.tags)
    assert "![samples](samples/step_000006.png)" in card.text
