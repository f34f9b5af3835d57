import math

import pytest
import torch
from torch import nn

from custom_pipelines.gan.dcgan import DCGANCritic
from custom_pipelines.gan.losses import (
    GAN_OBJECTIVES,
    WGANGP,
    GANObjective,
    NonSaturatingR1,
    WGANClipping,
    clip_weights_,
    gan_losses,
    gan_objective,
    gradient_penalty,
    ns_discriminator_loss,
    ns_generator_loss,
    r1_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)


class ToyCritic(nn.Module):
    """D(x) = sum(a · x²): gradient 2·a·x, easy to check by hand."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.7))

    def forward(self, x):
        return (self.a * x.square()).flatten(1).sum(dim=1, keepdim=True)


class LinearCritic(nn.Module):
    """D(x) = w · x with w = (1.5, 2): its gradient is w wherever it is taken, so ‖∇D‖ = 2.5 for R1 and GP alike."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.5, 2.0]))

    def forward(self, x):
        return (x.flatten(1) * self.w).sum(dim=1, keepdim=True)


# D(reals) = (1.5, 2), D(fakes) = (-1.5, 0)
REALS = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)
FAKES = torch.tensor([[-1.0, 0.0], [0.0, 0.0]]).view(2, 1, 1, 2)


def test_logistic_losses_match_formulas():
    real, fake = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [-3.0]])
    sigmoid = torch.sigmoid
    expected_d = -(torch.log(sigmoid(real)).mean() + torch.log(1 - sigmoid(fake)).mean())
    torch.testing.assert_close(ns_discriminator_loss(real, fake), expected_d)
    torch.testing.assert_close(ns_generator_loss(fake), -torch.log(sigmoid(fake)).mean())
    torch.testing.assert_close(wgan_critic_loss(real, fake), fake.mean() - real.mean())
    torch.testing.assert_close(wgan_generator_loss(fake), -fake.mean())


def test_r1_penalty_equals_squared_gradient_norm():
    critic = ToyCritic()
    x = torch.randn(3, 2, 4, 4).requires_grad_(True)
    penalty = r1_penalty(critic(x), x)
    expected = (2 * 0.7 * x.detach()).square().flatten(1).sum(dim=1).mean()
    torch.testing.assert_close(penalty, expected)
    penalty.backward()  # create_graph=True: the penalty trains the critic
    assert critic.a.grad is not None and critic.a.grad != 0


def test_gradient_penalty_equals_direct_autograd_computation():
    critic = ToyCritic()
    real, fake = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    penalty = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(5))

    epsilon = torch.rand(4, 1, 1, 1, generator=torch.Generator().manual_seed(5))
    x_hat = (epsilon * real + (1 - epsilon) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
    expected = 10.0 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(penalty, expected)
    # by hand: ∇ = 2·a·x̂
    torch.testing.assert_close(grad, 2 * 0.7 * x_hat.detach())
    penalty.backward()
    assert critic.a.grad is not None


def test_gradient_penalty_is_seeded_by_the_generator():
    critic = ToyCritic()
    real, fake = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    a = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(1))
    b = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(1))
    c = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_weight_clipping_keeps_every_parameter_in_range():
    torch.manual_seed(0)
    critic = DCGANCritic(resolution=8, img_channels=1, base_channels=4)
    for p in critic.parameters():
        p.data.normal_(0, 1)
    clip_weights_(critic, 0.05)
    values = torch.cat([p.flatten() for p in critic.parameters()])
    assert values.abs().max() <= 0.05 and (values.abs() == 0.05).any()
    with pytest.raises(ValueError, match="clip_value"):
        clip_weights_(critic, 0.0)


@pytest.mark.parametrize(
    "objective, expected_logs, d_total, g_loss",
    [
        # softplus(-D(x)) + softplus(D(G(z))): (0.2014 + 0.1269) / 2 + (0.2014 + 0.6931) / 2; γ/2 · ‖w‖² = 0.2 · 6.25
        (NonSaturatingR1(r1_gamma=0.4), {"d_loss": 0.6114509, "r1_penalty": 6.25}, 1.8614509, 1.1972802),
        # E[D(G(z))] - E[D(x)] = -0.75 - 1.75; G: -E[D(G(z))]
        (WGANClipping(clip_value=1.0), {"d_loss": -2.5, "wasserstein_estimate": 2.5}, -2.5, 0.75),
        # λ · (‖w‖ - 1)² = 10 · 1.5², for every interpolate
        (WGANGP(gp_lambda=10.0), {"d_loss": -2.5, "wasserstein_estimate": 2.5, "gradient_penalty": 22.5}, 20.0, 0.75),
    ],
    ids=["ns_r1", "wgan", "wgan_gp"],
)
def test_objectives_give_known_numbers_on_a_linear_critic(objective, expected_logs, d_total, g_loss):
    critic = LinearCritic()
    fakes = FAKES.clone().requires_grad_(True)
    loss, logs = objective.discriminator_loss(critic, REALS, fakes, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(d_total, abs=1e-6)
    assert {k: v.item() for k, v in logs.items()} == pytest.approx(expected_logs, abs=1e-6)
    loss.backward()
    assert fakes.grad is None and critic.w.grad is not None  # the D step does not reach the generator
    assert objective.generator_loss(critic(FAKES)).item() == pytest.approx(g_loss, abs=1e-6)


def test_after_discriminator_step_clips_only_for_wgan():
    for objective, w in (
        (WGANClipping(clip_value=1.0), [1.0, 1.0]),
        (WGANGP(), [1.5, 2.0]),
        (NonSaturatingR1(), [1.5, 2.0]),
    ):
        critic = LinearCritic()
        objective.after_discriminator_step(critic)
        assert critic.w.tolist() == w, objective


def test_registry_names_n_critic_and_optimizer():
    assert GAN_OBJECTIVES == {"ns_r1": NonSaturatingR1, "wgan": WGANClipping, "wgan_gp": WGANGP}
    # the papers' discriminator steps per generator step: StyleGAN 1, WGAN and WGAN-GP 5
    assert {name: cls.n_critic for name, cls in GAN_OBJECTIVES.items()} == {"ns_r1": 1, "wgan": 5, "wgan_gp": 5}
    assert [cls.optimizer for cls in GAN_OBJECTIVES.values()] == ["adam", "rmsprop", "adam"]
    assert WGANClipping.default_learning_rate == 5e-5 and NonSaturatingR1.default_learning_rate is None


@pytest.mark.parametrize("name", ["ns_r1", "wgan", "wgan_gp"])
def test_gan_objective_takes_only_its_own_weight(name):
    objective = gan_objective(name, r1_gamma=3.0, gp_lambda=4.0, clip_value=0.5)
    assert isinstance(objective, GAN_OBJECTIVES[name])
    assert objective == {"ns_r1": NonSaturatingR1(3.0), "wgan": WGANClipping(0.5), "wgan_gp": WGANGP(4.0)}[name]
    assert objective.needs_double_backward == (name != "wgan")
    assert gan_losses is gan_objective and isinstance(
        objective, GANObjective
    )  # the names custom_pipelines.gan exports


@pytest.mark.parametrize("name", ["ns_r1", "wgan", "wgan_gp"])
def test_objectives_train_a_dcgan_critic(name):
    torch.manual_seed(0)
    critic = DCGANCritic(resolution=8, img_channels=1, base_channels=4)
    objective = gan_objective(name)
    real, fake = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8, requires_grad=True)
    loss, logs = objective.discriminator_loss(critic, real, fake, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(loss.item()) and fake.grad is None
    assert all(p.grad is not None for p in critic.parameters())
    regularizer = {"ns_r1": "r1_penalty", "wgan": None, "wgan_gp": "gradient_penalty"}[name]
    if regularizer is not None:  # default γ = 10 enters as γ/2; the logged gradient_penalty already holds λ
        weight = 0.5 * 10 if name == "ns_r1" else 1
        assert loss.item() == pytest.approx((logs["d_loss"] + weight * logs[regularizer]).item())
    objective.generator_loss(critic(fake)).backward()
    assert fake.grad is not None


def test_lazy_regularization_and_zero_weight_skip_the_penalty():
    critic = ToyCritic()
    real, fake = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    for objective, regularize in ((NonSaturatingR1(), False), (NonSaturatingR1(r1_gamma=0.0), True)):
        loss, logs = objective.discriminator_loss(critic, real, fake, regularize=regularize)
        assert "r1_penalty" not in logs
        torch.testing.assert_close(loss, ns_discriminator_loss(critic(real), critic(fake)))
    _, logs = WGANGP(gp_lambda=0.0).discriminator_loss(critic, real, fake)
    assert "gradient_penalty" not in logs and not WGANGP(gp_lambda=0.0).needs_double_backward


def test_unknown_objective_and_bad_weights_raise():
    with pytest.raises(ValueError, match=r"one of \['ns_r1', 'wgan', 'wgan_gp'\], got 'hinge'"):
        gan_objective("hinge")
    with pytest.raises(ValueError, match="r1_gamma must be >= 0"):
        gan_objective("ns_r1", r1_gamma=-1)
    with pytest.raises(ValueError, match="gp_lambda must be >= 0"):
        WGANGP(gp_lambda=float("nan"))
    with pytest.raises(ValueError, match="clip_value must be > 0"):
        gan_objective("wgan", clip_value=0)
