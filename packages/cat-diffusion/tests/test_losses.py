"""KL loss of Eq. 5-6, cross-entropy and timestep sampling."""

from __future__ import annotations

import pytest
import torch
from cat_diffusion import (
    CategoricalDiffusionLoss,
    CategoricalScheduler,
    cross_entropy_loss,
    kl_loss,
    sample_timesteps,
)
from cat_diffusion.exceptions import ConfigError


def _batch(n: int = 4, b: int = 3, size: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, n, (b, 1, size, size, size), generator=g)
    return g, x0


def test_kl_is_zero_when_prediction_is_truth_and_positive_otherwise() -> None:
    sched = CategoricalScheduler(num_classes=4, num_train_timesteps=50)
    g, x0 = _batch()
    t = torch.tensor([0, 19, 49])
    xt = sched.add_noise(x0, None, t, generator=g)
    perfect = sched.one_hot(x0) * 1e4
    assert float(kl_loss(sched, perfect, x0, xt, t)) < 1e-5
    wrong = torch.randn(perfect.shape, generator=g)
    assert float(kl_loss(sched, wrong, x0, xt, t)) > 1e-3


def test_kl_matches_brute_force_and_equals_ce_at_t0() -> None:
    sched = CategoricalScheduler(num_classes=3, num_train_timesteps=30)
    g, x0 = _batch(n=3, b=2, size=3, seed=4)
    logits = torch.randn(2, 3, 3, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([8, 8])
    xt = sched.add_noise(x0, None, t, generator=g)
    q = sched.q_posterior(xt, x0, t).double()
    p = sched.model_log_probs(logits, xt, t).exp()
    brute = (q * (torch.log(q.clamp_min(1e-300)) - torch.log(p))).sum(1).mean()
    torch.testing.assert_close(kl_loss(sched, logits, x0, xt, t), brute, rtol=1e-5, atol=1e-7)
    # t = 0 (paper x_1): the true posterior is e(x0); KL = -log f(x0) = cross-entropy (decoder term).
    xt1 = sched.add_noise(x0, None, 0, generator=g)
    torch.testing.assert_close(kl_loss(sched, logits, x0, xt1, 0), cross_entropy_loss(logits, x0), rtol=1e-5, atol=1e-7)


def test_class_weights_are_a_weighted_mean() -> None:
    x0 = torch.tensor([[[0, 1, 1, 1]]])
    logits = torch.tensor([[[2.0, 0.0, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0]]])
    nll = -torch.log_softmax(logits, 1).gather(1, x0)[0, 0]
    w = torch.tensor([3.0, 1.0])[x0[0, 0]]
    expected = (nll * w).sum() / w.sum()
    torch.testing.assert_close(cross_entropy_loss(logits, x0, class_weights=[3.0, 1.0]), expected)
    with pytest.raises(ConfigError, match="class_weights"):
        cross_entropy_loss(logits, x0, class_weights=[1.0])


def test_loss_gradients_are_finite_at_every_timestep() -> None:
    sched = CategoricalScheduler(num_classes=3, num_train_timesteps=20)
    _, x0 = _batch(n=3, b=1, size=4)
    for t in (0, 1, 9, 19):
        xt = sched.add_noise(x0, None, t, generator=torch.Generator().manual_seed(t))
        logits = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
        kl_loss(sched, logits, x0, xt, t).backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_timestep_sampling_uniform_and_power() -> None:
    g = torch.Generator().manual_seed(0)
    T, n = 10, 200000
    t = sample_timesteps(n, T, generator=g)
    assert int(t.min()) == 0 and int(t.max()) == T - 1
    tp = sample_timesteps(n, T, mode="power", power=1.5, generator=g).double()
    w = torch.arange(1, T + 1, dtype=torch.float64) ** 1.5  # P(t) ~ (t + 1) ** 1.5
    mean = float((w * torch.arange(0, T)).sum() / w.sum())
    assert abs(float(tp.mean()) - mean) < 0.02
    assert abs(float(t.double().mean()) - (T - 1) / 2) < 0.02
    with pytest.raises(ConfigError, match="Did you mean 'power'"):
        sample_timesteps(2, T, mode="powr")  # type: ignore[arg-type]


def test_full_loss_backpropagates_into_a_model() -> None:
    sched = CategoricalScheduler(num_classes=3, num_train_timesteps=20)
    net = torch.nn.Conv3d(3, 3, 3, padding=1)

    def model(x, t, *, context=None):
        return net(x)

    loss_fn = CategoricalDiffusionLoss(ce_weight=0.5, class_weights=[1.0, 2.0, 2.0], timestep_sampling="power")
    _, x0 = _batch(n=3, b=2, size=4)
    out = loss_fn(model, sched, x0, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
    torch.testing.assert_close(out.loss.detach(), out.kl + 0.5 * out.ce)
    with pytest.raises(ConfigError):
        CategoricalDiffusionLoss(kl_weight=0.0, ce_weight=0.0)
