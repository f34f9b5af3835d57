import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from custom_pipelines.evaluation.digits_classifier import DigitsClassifier
from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.models.class_conditioning import class_conditional_unet_config
from custom_pipelines.pipelines.guidance import (
    ClassifierFreeGuidance,
    classifier_guidance_loss,
    combine_cfg,
    digits_classifier_guidance,
    drop_class_labels,
    loss_guided_model_output,
    mean_color_loss,
)
from custom_pipelines.pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline
from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler
from tests.utils import scheduler_config, tiny_unet


def conditional_unet(method="embedding", seed=0):
    cls, config = class_conditional_unet_config(load_component_config("cfg-tiny-8", "unet"), method, 10)
    torch.manual_seed(seed)
    return cls.from_config(config).eval()


@pytest.fixture
def uncond_pipe():
    pipe = UnconditionalDiffusionPipeline(
        unet=tiny_unet(), scheduler=DDPMAncestralScheduler.from_config(scheduler_config())
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def cond_pipe():
    scheduler = DDPMAncestralScheduler.from_config(scheduler_config("cfg-tiny-8"))
    pipe = ClassConditionalDiffusionPipeline(unet=conditional_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="pt", **kwargs).images


# ----- classifier-free guidance --------------------------------------------------------------------------------------
def test_combine_cfg_formula_and_learned_variance():
    cond, uncond = torch.full((1, 2, 1, 1), 3.0), torch.full((1, 2, 1, 1), 1.0)
    torch.testing.assert_close(combine_cfg(cond, uncond, 2.5, channels=2), torch.full((1, 2, 1, 1), 6.0))
    cond = torch.tensor([3.0, 7.0]).reshape(1, 2, 1, 1)  # 1 mean + 1 variance channel
    uncond = torch.tensor([1.0, -5.0]).reshape(1, 2, 1, 1)
    torch.testing.assert_close(combine_cfg(cond, uncond, 2.0, channels=1).flatten(), torch.tensor([5.0, 7.0]))


@pytest.mark.parametrize("method", ["embedding", "concat"])
def test_batched_cfg_equals_two_passes_combined(method):
    unet = conditional_unet(method)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels, t, w = torch.tensor([2, 5, 9]), torch.tensor(40), 3.5
    calls = []
    unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append(args[0].shape[0]), with_kwargs=True)
    with torch.no_grad():
        guided = ClassifierFreeGuidance(unet, labels, w, null_class_id=10)(x, t)
        assert calls == [6]  # one forward pass over [cond; null]
        eps_c = unet(x, t, class_labels=labels).sample
        eps_u = unet(x, t, class_labels=torch.full_like(labels, 10)).sample
    torch.testing.assert_close(guided, eps_u + w * (eps_c - eps_u), rtol=1e-5, atol=1e-5)


def test_scale_one_is_conditional_and_zero_is_unconditional_single_pass():
    unet = conditional_unet()
    x, labels, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 4]), torch.tensor(10)
    calls = []
    unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    with torch.no_grad():
        one = ClassifierFreeGuidance(unet, labels, 1.0, 10)
        zero = ClassifierFreeGuidance(unet, labels, 0.0, 10)
        assert not one.does_batch_cfg and not zero.does_batch_cfg
        assert torch.equal(one(x, t), unet(x, t, class_labels=labels).sample)
        assert torch.equal(zero(x, t), unet(x, t, class_labels=torch.tensor([10, 10])).sample)
    assert calls == [2, 2, 2, 2]


def test_label_dropout_rate_is_what_was_asked():
    labels = torch.randint(0, 10, (200_000,), generator=torch.Generator().manual_seed(0))
    for p in (0.1, 0.25):
        dropped = drop_class_labels(labels, 10, p, generator=torch.Generator().manual_seed(1))
        rate = (dropped == 10).float().mean().item()
        assert abs(rate - p) < 0.004, (p, rate)  # 5 sigma of a binomial with n = 200k
        kept = dropped != 10
        assert torch.equal(dropped[kept], labels[kept])  # the others are untouched
    assert torch.equal(drop_class_labels(labels, 10, 0.0), labels)
    assert (drop_class_labels(labels, 10, 1.0) == 10).all()
    a = drop_class_labels(labels, 10, 0.1, generator=torch.Generator().manual_seed(3))
    b = drop_class_labels(labels, 10, 0.1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="conditioning dropout must be in"):
        drop_class_labels(labels, 10, 1.5)


# ----- loss guidance -------------------------------------------------------------------------------------------------
def test_mean_color_loss_values():
    x0 = torch.stack([torch.full((3, 4, 4), -1.0), torch.full((3, 4, 4), 1.0)])  # black, white
    np.testing.assert_allclose(mean_color_loss(0.25)(x0).numpy(), [16 * 3 * 0.25**2, 16 * 3 * 0.75**2])
    np.testing.assert_allclose(mean_color_loss([1.0, 0.0, 0.5])(x0).numpy(), [16 * 1.25, 16 * 1.25])
    with pytest.raises(ValueError, match="target brightness/colour must be in"):
        mean_color_loss(1.5)
    with pytest.raises(ValueError, match="2 values for images with 3 channels"):
        mean_color_loss([0.1, 0.2])(x0)


@pytest.mark.parametrize("target", [0.15, 0.85])
def test_brightness_guidance_moves_images_toward_target(uncond_pipe, target):
    plain = sample(uncond_pipe, batch_size=4)
    guided = sample(uncond_pipe, batch_size=4, guidance_fn=mean_color_loss(target), guidance_strength=2.0)
    plain_error = (plain.mean(dim=(1, 2, 3)) - target).abs()
    guided_error = (guided.mean(dim=(1, 2, 3)) - target).abs()
    assert (guided_error < plain_error).all()
    assert guided_error.mean() < 0.5 * plain_error.mean()


def test_brightness_guidance_in_class_conditional_pipeline(cond_pipe):
    labels = [0, 3, 7]
    plain = sample(cond_pipe, class_labels=labels, guidance_scale=2.0)
    guided = sample(
        cond_pipe, class_labels=labels, guidance_scale=2.0, guidance_fn=mean_color_loss(0.9), guidance_strength=2.0
    )
    assert (guided.mean(dim=(1, 2, 3)) > plain.mean(dim=(1, 2, 3)) + 0.1).all()


def test_zero_strength_equals_unguided_and_callable_strength_is_called(uncond_pipe):
    plain = sample(uncond_pipe, batch_size=2)
    zero = sample(uncond_pipe, batch_size=2, guidance_fn=mean_color_loss(0.9), guidance_strength=0.0)
    torch.testing.assert_close(zero, plain, rtol=0, atol=1e-6)
    seen = []

    def strength(step_index, t):
        seen.append((step_index, t))
        return 2.0

    by_callable = sample(uncond_pipe, batch_size=2, guidance_fn=mean_color_loss(0.9), guidance_strength=strength)
    constant = sample(uncond_pipe, batch_size=2, guidance_fn=mean_color_loss(0.9), guidance_strength=2.0)
    assert [i for i, _ in seen] == [0, 1, 2, 3] and all(isinstance(t, int) for _, t in seen)
    torch.testing.assert_close(by_callable, constant, rtol=0, atol=0)


def test_guided_batch_equals_single_runs(uncond_pipe):
    kwargs = {"guidance_fn": mean_color_loss(0.8), "guidance_strength": 2.0, "num_inference_steps": 3}
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    batch = uncond_pipe(batch_size=2, generator=gens, output_type="np", **kwargs).images
    singles = [
        uncond_pipe(generator=[torch.Generator().manual_seed(s)], output_type="np", **kwargs).images[0] for s in (1, 2)
    ]
    np.testing.assert_allclose(batch, np.stack(singles), atol=1e-5)


def test_gradient_flows_through_the_model():
    """The push is −s ∇_{x_t} L(x̂_0(x_t)) with the model's Jacobian included (checked by finite differences)."""
    unet, scheduler = tiny_unet(), DDPMAncestralScheduler.from_config(scheduler_config())
    scheduler.set_timesteps(4)
    t = scheduler.timesteps[1]
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    unet = unet.double()
    loss_fn = mean_color_loss(0.7)

    def model_fn(inp, t):
        return unet(inp, t).sample

    _, pushed = loss_guided_model_output(model_fn, scheduler, x, t, 0, loss_fn, 1.0)
    gradient = x - pushed
    alpha = scheduler.alphas_cumprod[int(t)].double()

    def loss_at(sample):
        with torch.no_grad():
            x0 = (sample - (1 - alpha).sqrt() * unet(sample, t).sample) / alpha.sqrt()
            return loss_fn(x0).sum()

    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-5
    numeric = (loss_at(x + h * direction) - loss_at(x - h * direction)) / (2 * h)
    torch.testing.assert_close((gradient * direction).sum(), numeric, rtol=1e-4, atol=1e-8)


def test_classifier_guidance_raises_the_chosen_class_probability(cond_pipe):
    torch.manual_seed(0)
    classifier = DigitsClassifier(resolution=8).eval()  # random weights are enough to test the direction
    labels = [4, 4, 4]
    plain = sample(cond_pipe, class_labels=labels, guidance_scale=1.0)
    guided = sample(
        cond_pipe,
        class_labels=labels,
        guidance_scale=1.0,
        guidance_fn=digits_classifier_guidance(classifier, 4),
        guidance_strength=5.0,
    )
    with torch.no_grad():
        p_plain = classifier(plain).softmax(-1)[:, 4]
        p_guided = classifier(guided).softmax(-1)[:, 4]
    assert p_guided.mean() > p_plain.mean()


def test_classifier_guidance_loss_is_minus_log_prob():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    loss = classifier_guidance_loss(lambda x0: logits, [0, 2])(torch.zeros(2, 1, 2, 2))
    torch.testing.assert_close(loss, -torch.log_softmax(logits, -1)[[0, 1], [0, 2]])
    with pytest.raises(ValueError, match="3 class_labels for a batch of 2"):
        classifier_guidance_loss(lambda x0: logits, [0, 1, 2])(torch.zeros(2, 1, 2, 2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"guidance_fn": "brightness"}, "guidance_fn must be callable"),
        ({"guidance_fn": mean_color_loss(0.5), "guidance_strength": -1.0}, "guidance_strength must be >= 0"),
        ({"guidance_fn": mean_color_loss(0.5), "guidance_strength": "big"}, "guidance_strength must be a float"),
        ({"guidance_fn": lambda x0: x0}, "guidance_fn must return a scalar or one loss per sample"),
    ],
)
def test_bad_guidance_arguments_raise(uncond_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(uncond_pipe, **kwargs)


def test_loss_guidance_needs_a_variance_preserving_scheduler(uncond_pipe):
    uncond_pipe.scheduler = EulerDiscreteScheduler.from_config(uncond_pipe.scheduler.config)
    with pytest.raises(ValueError, match="variance-preserving scheduler"):
        sample(uncond_pipe, guidance_fn=mean_color_loss(0.5))
