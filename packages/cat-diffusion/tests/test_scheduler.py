"""Forward process, posteriors and step of the categorical scheduler against brute force."""

from __future__ import annotations

import math

import pytest
import torch
from cat_diffusion import CategoricalScheduler
from cat_diffusion.exceptions import CatDiffusionError, ConfigError, ShapeError


def step_matrix(sched: CategoricalScheduler, t: int) -> torch.Tensor:
    """Q_t[i, j] = q(x_t = j | x_{t-1} = i) from Eq. 1, built from beta_t alone."""
    n = sched.num_classes
    beta = float(sched.betas[t])
    return (1 - beta) * torch.eye(n, dtype=torch.float64) + beta / n * torch.ones(n, n, dtype=torch.float64)


def product(sched: CategoricalScheduler, s: int, t: int) -> torch.Tensor:
    """q(x_t | x_s) as the product Q_{s+1} ... Q_t of single steps."""
    n = sched.num_classes
    m = torch.eye(n, dtype=torch.float64)
    for k in range(s + 1, t + 1):
        m = m @ step_matrix(sched, k)
    return m


def test_cosine_schedule_matches_definition() -> None:
    T = 50
    sched = CategoricalScheduler(num_classes=3, num_train_timesteps=T)
    s = 0.008
    f = [math.cos((k / T + s) / (1 + s) * math.pi / 2) ** 2 for k in range(T + 1)]
    expected = torch.tensor([v / f[0] for v in f], dtype=torch.float64)
    # The last beta is clipped at 0.999 by design; compare the unclipped range.
    torch.testing.assert_close(sched.alphas_cumprod[: T], expected[: T], rtol=1e-10, atol=1e-12)
    assert float(sched.alphas_cumprod[T]) < 1e-4


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_closed_form_equals_repeated_single_steps(schedule: str) -> None:
    sched = CategoricalScheduler(num_classes=4, num_train_timesteps=25, schedule=schedule, beta_start=0.01, beta_end=0.3)
    n = sched.num_classes
    x0 = torch.arange(n).view(n, 1, 1)  # each class once, shape (B=n, 1, 1)
    x0_probs = sched.one_hot(x0, torch.float64)
    for t in range(1, 26):  # paper index; the public timestep is t - 1
        expected = product(sched, 0, t)  # row d = q(x_t | x_0 = d)
        got = sched.q_probs(x0_probs, t - 1)[:, :, 0]
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_add_noise_statistically_matches_sequential_sampling() -> None:
    sched = CategoricalScheduler(num_classes=3, num_train_timesteps=30)
    g = torch.Generator().manual_seed(0)
    n_vox = 40000
    x0 = torch.full((1, 1, n_vox), 2, dtype=torch.long)
    for t in (1, 7, 15, 30):
        # Sequential: t single steps with Eq. 1, sampled with torch.multinomial.
        x = x0[0, 0].clone()
        for k in range(1, t + 1):
            rows = step_matrix(sched, k)[x]
            x = torch.multinomial(rows, 1, generator=g)[:, 0]
        seq_hist = torch.bincount(x, minlength=3).double() / n_vox
        direct = sched.add_noise(x0, None, t - 1, generator=g)[0, 0]
        dir_hist = torch.bincount(direct, minlength=3).double() / n_vox
        p = product(sched, 0, t)[2]
        sigma = torch.sqrt(p * (1 - p) / n_vox)
        assert torch.all((seq_hist - p).abs() < 5 * sigma + 1e-9), (t, seq_hist, p)
        assert torch.all((dir_hist - p).abs() < 5 * sigma + 1e-9), (t, dir_hist, p)
        assert torch.all((seq_hist - dir_hist).abs() < 7 * sigma + 1e-9)


def test_add_noise_noise_argument_is_deterministic_and_t0_is_one_step() -> None:
    sched = CategoricalScheduler(num_classes=5, num_train_timesteps=10)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 5, (2, 1, 4, 4, 4), generator=g)
    noise = torch.rand(x0.shape, generator=g)
    a = sched.add_noise(x0, noise, torch.tensor([3, 9]))
    b = sched.add_noise(x0, noise, torch.tensor([3, 9]))
    assert torch.equal(a, b) and a.dtype == torch.long and a.shape == x0.shape
    # t = 0 is one forward step: a voxel keeps its class where its uniform number is < abar_1.
    keep = noise < float(sched.alphas_cumprod[1])
    out = sched.add_noise(x0, noise, 0)
    assert torch.equal(out[keep], x0[keep]) and 0 < int(keep.sum()) < keep.numel()


def test_posterior_sums_to_one_and_equals_bayes_rule() -> None:
    sched = CategoricalScheduler(num_classes=4, num_train_timesteps=12)
    n = 4
    xt, x0 = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    xt = xt.reshape(-1, 1, 1)
    x0 = x0.reshape(-1, 1, 1)
    for t in range(1, 13):
        for s in sorted({t - 1, 0, t // 2}):
            if s >= t:
                continue
            got = sched.q_posterior(xt, x0, t - 1, s - 1)[:, :, 0].double()
            torch.testing.assert_close(got.sum(1), torch.ones(n * n, dtype=torch.float64), atol=1e-6, rtol=0)
            q_s0 = product(sched, 0, s)  # q(x_s | x_0)
            q_ts = product(sched, s, t)  # q(x_t | x_s)
            q_t0 = product(sched, 0, t)  # q(x_t | x_0)
            for row in range(n * n):
                j, d = int(xt[row]), int(x0[row])
                brute = torch.tensor([q_ts[k, j] * q_s0[d, k] / q_t0[d, j] for k in range(n)], dtype=torch.float64)
                torch.testing.assert_close(got[row], brute, atol=1e-6, rtol=1e-5)


def test_model_distribution_marginalises_over_classes() -> None:
    """p_theta = A f_theta (Eq. 6): the sum over x0 classes of f_d times the posterior given d."""
    sched = CategoricalScheduler(num_classes=5, num_train_timesteps=40)
    g = torch.Generator().manual_seed(3)
    n = 5
    xt = torch.randint(0, n, (6, 1, 3), generator=g)
    logits = torch.randn(6, n, 3, generator=g, dtype=torch.float64) * 2
    f = torch.softmax(logits, 1)
    for t, s in [(1, 0), (2, 1), (17, 16), (40, 39), (40, 10), (25, 0)]:
        got = sched.model_log_probs(logits, xt, t - 1, s - 1).exp()
        q_s0, q_ts, q_t0 = product(sched, 0, s), product(sched, s, t), product(sched, 0, t)
        for b in range(6):
            for v in range(3):
                j = int(xt[b, 0, v])
                brute = sum(
                    f[b, d, v] * torch.stack([q_ts[k, j] * q_s0[d, k] / q_t0[d, j] for k in range(n)])
                    for d in range(n)
                )
                torch.testing.assert_close(got[b, :, v], brute, atol=1e-10, rtol=1e-8)


def test_skip_posterior_preserves_marginals() -> None:
    sched = CategoricalScheduler(num_classes=3, num_train_timesteps=20)
    n = 3
    for t, s in [(20, 5), (10, 9), (7, 0)]:
        for d in range(n):
            x0 = torch.full((n, 1, 1), d)
            xt = torch.arange(n).view(n, 1, 1)
            post = sched.q_posterior(xt, x0, t - 1, s - 1)[:, :, 0].double()  # row j: q(x_s | x_t=j, x0=d)
            q_t = product(sched, 0, t)[d]
            torch.testing.assert_close(q_t @ post, product(sched, 0, s)[d], atol=1e-6, rtol=0)


def test_timestep_grid_and_step() -> None:
    sched = CategoricalScheduler(num_classes=3, num_train_timesteps=1000)
    assert sched.timesteps[0] == 999 and sched.timesteps[-1] == 0 and len(sched.timesteps) == 1000
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert sched.previous_timestep(0) == -1 and sched.previous_timestep(999) == 888
    logits = torch.tensor([[[0.0], [3.0], [1.0]]])
    x = torch.zeros(1, 1, 1, dtype=torch.long)
    out = sched.step(logits, 0, x, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.item() == 1 and out.pred_original_sample.item() == 1
    torch.testing.assert_close(out.pred_original_probs.sum(1), torch.ones(1, 1))
    with pytest.raises(ConfigError, match="not on the current grid"):
        sched.step(logits, 150, x)
    with pytest.raises(ConfigError, match=r"closest valid value: 1000"):
        sched.set_timesteps(5000)


def test_bad_inputs_raise_clear_errors() -> None:
    sched = CategoricalScheduler(num_classes=3, num_train_timesteps=10)
    with pytest.raises(ShapeError, match="add the channel"):
        sched.add_noise(torch.zeros(2, 4, 4, dtype=torch.long), None, 1)
    with pytest.raises(ShapeError, match=r"allowed \[0, 2\]"):
        sched.add_noise(torch.full((1, 1, 2), 3), None, 1)
    with pytest.raises(ShapeError, match="integer label map"):
        sched.add_noise(torch.zeros(1, 1, 2), None, 1)
    with pytest.raises(ShapeError, match=r"\[0, 9\]"):
        sched.add_noise(torch.zeros(1, 1, 2, dtype=torch.long), None, 10)
    with pytest.raises(ConfigError, match="Did you mean 'cosine'"):
        CategoricalScheduler(num_classes=3, schedule="cosin")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="logits over num_classes=3"):
        sched.step(torch.zeros(1, 4, 2), 0, torch.zeros(1, 1, 2, dtype=torch.long))
    assert issubclass(CatDiffusionError, ValueError)
