"""KL loss of Eq. 5-6, cross-entropy, the class-mass term and timestep sampling."""

from __future__ import annotations

import pytest
import torch
from cat_diffusion import (
    CategoricalDiffusionLoss,
    CategoricalScheduler,
    class_mass_loss,
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


def test_class_mass_loss_matches_a_hand_count() -> None:
    # one sample, four voxels, class 2 counted; x_t shows voxel 3 as class 2 (excluded from both sides)
    x0 = torch.tensor([[[2, 2, 0, 2]]])
    xt = torch.tensor([[[2, 0, 1, 2]]])
    logits = torch.log(torch.tensor([[[0.2, 0.5, 0.6, 0.1], [0.2, 0.1, 0.3, 0.1], [0.6, 0.4, 0.1, 0.8]]]))
    pred = 0.4 + 0.1  # hidden voxels 1 and 2 (voxel 0 is shown as class 2 too)
    true = 1.0  # voxel 1 is class 2 in x0 and hidden in x_t
    expected = (pred - true) ** 2 / (1 + true)
    torch.testing.assert_close(class_mass_loss(logits, x0, xt, 2), torch.tensor(expected))
    # a batch is the mean of its samples
    both = class_mass_loss(torch.cat([logits, logits.flip(-1)]), torch.cat([x0, x0]), torch.cat([xt, xt]), 2)
    one = class_mass_loss(logits.flip(-1), x0, xt, 2)
    torch.testing.assert_close(both, (torch.tensor(expected) + one) / 2)


def test_class_mass_loss_uses_calibrated_probabilities() -> None:
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    xt = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    logits = torch.randn(2, 3, 4, 4, 4, generator=g)
    w = torch.tensor([1.0, 1.0, 20.0])
    biased = logits + torch.log(w).reshape(1, 3, 1, 1, 1)  # what a weighted CE's optimum looks like
    torch.testing.assert_close(
        class_mass_loss(biased, x0, xt, 2, class_weights=w), class_mass_loss(logits, x0, xt, 2)
    )
    with pytest.raises(ConfigError, match="class_weights"):
        class_mass_loss(logits, x0, xt, 2, class_weights=[1.0, 0.0, 2.0])
    with pytest.raises(ConfigError, match="cls"):
        class_mass_loss(logits, x0, xt, 3)


def test_class_mass_loss_pulls_spare_probability_down_once_every_voxel_is_shown() -> None:
    # x_t already shows the only class-1 voxel: probability of class 1 anywhere else is surplus
    x0 = torch.zeros(1, 1, 3, 3, 3, dtype=torch.long)
    x0[0, 0, 1, 1, 1] = 1
    xt = x0.clone()
    logits = torch.zeros(1, 2, 3, 3, 3)
    logits[:, 1] = -2.0  # about 0.12 of class 1 on each of 26 hidden voxels
    logits.requires_grad_(True)
    loss = class_mass_loss(logits, x0, xt, 1)
    assert float(loss.detach()) > 9.0  # (26 * 0.119) ** 2
    loss.backward()
    hidden = torch.ones(3, 3, 3, dtype=torch.bool)
    hidden[1, 1, 1] = False
    assert bool((logits.grad[0, 1][hidden] > 0).all())  # descent lowers every spare class-1 logit
    assert float(logits.grad[0, :, 1, 1, 1].abs().sum()) == 0.0  # the shown voxel is left alone
    # and is zero where the prediction adds up to the truth
    x0[0, 0, 0, 0, 0] = 1  # one hidden class-1 voxel: 26 voxels at p = 1/26 predict exactly 1
    flat = torch.zeros(1, 2, 3, 3, 3)
    flat[:, 1] = torch.log(torch.tensor(1 / 25))  # softmax gives 1/26 for class 1
    assert float(class_mass_loss(flat, x0, xt, 1)) < 1e-10


def test_full_loss_adds_the_mass_term() -> None:
    sched = CategoricalScheduler(num_classes=3, num_train_timesteps=20)
    net = torch.nn.Conv3d(3, 3, 3, padding=1)

    def model(x, t, *, context=None):
        return net(x)

    _, x0 = _batch(n=3, b=2, size=4)
    loss_fn = CategoricalDiffusionLoss(ce_weight=0.5, mass_weight=0.3, mass_class=2)
    out = loss_fn(model, sched, x0, generator=torch.Generator().manual_seed(0))
    assert float(out.mass) > 0
    torch.testing.assert_close(out.loss.detach(), out.kl + 0.5 * out.ce + 0.3 * out.mass)
    off = CategoricalDiffusionLoss(ce_weight=0.5)(model, sched, x0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(off.loss.detach(), out.kl + 0.5 * out.ce)
    with pytest.raises(ConfigError, match="mass_class"):
        CategoricalDiffusionLoss(mass_weight=0.3)
    with pytest.raises(ConfigError, match="mass_weight"):
        CategoricalDiffusionLoss(mass_weight=-1.0, mass_class=2)


def test_class_mass_loss_counts_near_and_far_voxels_apart() -> None:
    # 1D for a hand count: x_t shows class 1 at index 3; with near=1, indices 2 and 4 are near
    x0 = torch.tensor([[[0, 0, 1, 1, 0, 0, 0, 1]]])
    xt = torch.tensor([[[0, 0, 0, 1, 0, 0, 0, 0]]])
    p1 = torch.tensor([0.1, 0.0, 0.3, 0.9, 0.5, 0.2, 0.0, 0.6])
    logits = torch.log(torch.stack([1 - p1, p1])[None].clamp_min(1e-12))
    near_pred, near_true = 0.3 + 0.5, 1.0
    far_pred, far_true = 0.1 + 0.0 + 0.2 + 0.0 + 0.6, 1.0
    expected = (near_pred - near_true) ** 2 / 2 + (far_pred - far_true) ** 2 / 2
    torch.testing.assert_close(class_mass_loss(logits, x0, xt, 1, near=1), torch.tensor(expected))
    # one region: the same hidden voxels summed together
    one = (near_pred + far_pred - 2.0) ** 2 / 3
    torch.testing.assert_close(class_mass_loss(logits, x0, xt, 1), torch.tensor(one))
    # probability moved from growing the shown component to starting a new one is caught only
    # by the split: the total stays right
    moved = p1.clone()
    moved[4], moved[5] = 0.7, 0.0
    lg = torch.log(torch.stack([1 - moved, moved])[None].clamp_min(1e-12))
    torch.testing.assert_close(class_mass_loss(lg, x0, xt, 1), class_mass_loss(logits, x0, xt, 1))
    assert float(class_mass_loss(lg, x0, xt, 1, near=1)) != float(class_mass_loss(logits, x0, xt, 1, near=1))
    # 3D: a 5^3 neighbourhood (near=2) around the shown voxel
    x3 = torch.zeros(1, 1, 7, 7, 7, dtype=torch.long)
    x3[0, 0, 3, 3, 3] = 1
    y3 = x3.clone()
    y3[0, 0, 0, 0, 0] = 1  # a hidden component far from the shown one
    flat = torch.zeros(1, 2, 7, 7, 7)
    flat[:, 1] = -30.0
    flat[0, 1, 0, 0, 0] = 30.0  # predicts the far voxel exactly, nothing near
    assert float(class_mass_loss(flat, y3, x3, 1, near=2)) < 1e-8
    with pytest.raises(ConfigError, match="near"):
        class_mass_loss(flat, y3, x3, 1, near=-1)
