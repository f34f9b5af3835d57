"""The core's constant_then_linear lr schedule and the generic variant-recipe reader."""

import argparse
import json

import pytest
import torch

from custom_pipelines.training.recipe import apply_variant_recipe, parse_command_line
from custom_pipelines.training.trainer import constant_then_linear_schedule


def _factors(warmup, total):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = constant_then_linear_schedule(opt, warmup, total)
    factors = []
    for _ in range(total):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return factors


def test_constant_then_linear_holds_half_then_decays_to_zero():
    f = _factors(0, 100)
    assert f[:50] == [1.0] * 50
    assert f[50] == pytest.approx(1.0) and f[75] == pytest.approx(0.5) and f[99] == pytest.approx(0.02)
    assert all(a >= b for a, b in zip(f[50:], f[51:]))


def test_constant_then_linear_warms_up_first():
    f = _factors(10, 100)
    assert f[0] == 0.0 and f[5] == pytest.approx(0.5) and f[10:50] == [1.0] * 40


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_config")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--lambda_cycle", type=float, default=5.0)
    return parser


def test_apply_variant_recipe_fills_only_flags_not_given(tmp_path):
    (tmp_path / "training_recipe.json").write_text(json.dumps({"learning_rate": 2e-4, "lambda_cycle": 10}))
    parser = _parser()
    args, given = parse_command_line(parser, ["--model_config", str(tmp_path), "--learning_rate", "1e-3"])
    assert apply_variant_recipe(args, parser, given, [None, str(tmp_path)]) == tmp_path / "training_recipe.json"
    assert args.learning_rate == 1e-3 and args.lambda_cycle == 10.0 and isinstance(args.lambda_cycle, float)
    assert args.training_recipe == str(tmp_path / "training_recipe.json")


def test_apply_variant_recipe_skips_folders_without_one_or_turned_down(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "training_recipe.json").write_text(json.dumps({"lambda_cycle": 10}))
    parser = _parser()
    args, given = parse_command_line(parser, [])
    sources = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert apply_variant_recipe(args, parser, given, sources, lambda folder: False) is None
    assert args.lambda_cycle == 5.0 and args.training_recipe is None
    assert apply_variant_recipe(args, parser, given, sources) is not None
    assert args.lambda_cycle == 10.0


def test_apply_variant_recipe_rejects_unknown_flags(tmp_path):
    (tmp_path / "training_recipe.json").write_text(json.dumps({"lambda_cycles": 10}))
    parser = _parser()
    args, given = parse_command_line(parser, [])
    with pytest.raises(ValueError, match="lambda_cycles"):
        apply_variant_recipe(args, parser, given, [str(tmp_path)])
