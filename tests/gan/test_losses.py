import math

import pytest
import torch
from torch import nn

from custom_pipelines.gan.dcgan import DCGANCritic
from custom_pipelines.gan.losses import (
    clip_weights_,
    gan_losses,
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


@pytest.mark.parametrize("name", ["ns_r1", "wgan", "wgan_gp"])
def test_gan_losses_discriminator_and_generator_steps(name):
    torch.manual_seed(0)
    critic = DCGANCritic(resolution=8, img_channels=1, base_channels=4)
    losses = gan_losses(name)
    real, fake = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8, requires_grad=True)
    loss, logs = losses.discriminator_loss(critic, real, fake, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(loss.item()) and "d_loss" in logs
    assert fake.grad is None  # the discriminator step does not reach the generator
    assert all(p.grad is not None for p in critic.parameters())
    regularizer = {"ns_r1": "r1_penalty", "wgan": None, "wgan_gp": "gradient_penalty"}[name]
    if regularizer is not None:
        assert logs[regularizer] > 0
        assert loss.item() == pytest.approx(
            (logs["d_loss"] + (0.5 * 10 if name == "ns_r1" else 1) * logs[regularizer]).item()
        )
    g_loss = losses.generator_loss(critic(fake))
    g_loss.backward()
    assert fake.grad is not None
    assert losses.discriminator_steps == (1 if name == "ns_r1" else 5)


def test_after_discriminator_step_clips_only_for_wgan():
    for name, clipped in (("wgan", True), ("wgan_gp", False), ("ns_r1", False)):
        torch.manual_seed(0)
        critic = DCGANCritic(resolution=8, img_channels=1, base_channels=4)
        for p in critic.parameters():
            p.data.normal_(0, 1)
        gan_losses(name, clip_value=0.125).after_discriminator_step(critic)
        max_abs = max(p.abs().max().item() for p in critic.parameters())
        assert (max_abs <= 0.125) == clipped


def test_lazy_regularization_skips_the_penalty():
    critic = ToyCritic()
    real, fake = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    loss, logs = gan_losses("ns_r1").discriminator_loss(critic, real, fake, regularize=False)
    assert "r1_penalty" not in logs
    torch.testing.assert_close(loss, ns_discriminator_loss(critic(real), critic(fake)))


def test_gan_losses_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'ns_r1', 'wgan' or 'wgan_gp'"):
        gan_losses("hinge")
    with pytest.raises(ValueError, match="r1_gamma"):
        gan_losses("ns_r1", r1_gamma=-1)
    with pytest.raises(ValueError, match="clip_value"):
        gan_losses("wgan", clip_value=0)
