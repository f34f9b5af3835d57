import argparse

import torch

from custom_pipelines.training.trainer import adamw


def _args():
    return argparse.Namespace(
        learning_rate=1e-2, adam_beta1=0.9, adam_beta2=0.99, adam_weight_decay=1e-2, adam_epsilon=1e-8
    )


def test_adamw_is_fused_on_cpu_and_matches_the_reference_update():
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(4, 8), torch.nn.Linear(4, 2))
    ours = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(4, 8), torch.nn.Linear(4, 2))
    ours.load_state_dict(reference.state_dict())
    optimizer = adamw(ours.parameters(), _args())
    assert optimizer.defaults["fused"] is True and not optimizer.defaults["foreach"]
    plain = torch.optim.AdamW(
        reference.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-2, eps=1e-8, foreach=False
    )
    for _ in range(5):
        for p, q in zip(ours.parameters(), reference.parameters()):
            q.grad = torch.randn_like(q)
            p.grad = q.grad.clone()
        optimizer.step()
        plain.step()
    moved = [(p - q).abs().max().item() for p, q in zip(ours.parameters(), reference.parameters())]
    assert max(moved) < 1e-6
    assert optimizer.state_dict()["state"][0]["exp_avg_sq"].sum() > 0


def test_adamw_overrides_learning_rate_and_betas():
    optimizer = adamw([torch.nn.Parameter(torch.zeros(3))], _args(), lr=5e-4, betas=(0.0, 0.9))
    assert optimizer.defaults["lr"] == 5e-4 and optimizer.defaults["betas"] == (0.0, 0.9)


def test_adamw_falls_back_to_foreach_on_devices_without_a_fused_kernel(monkeypatch):
    from types import SimpleNamespace

    from custom_pipelines.training import trainer

    monkeypatch.setattr(trainer, "PartialState", lambda: SimpleNamespace(device=torch.device("meta")))
    optimizer = adamw([torch.nn.Parameter(torch.zeros(3))], _args())
    assert not optimizer.defaults["fused"] and optimizer.defaults["foreach"] is True
