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


# ---------------------------------------------------------------- non-uniform noise marginal
# D3PM "uniform-like" transitions with a marginal m: Q_t = (1 - beta_t) I + beta_t 1 m^T. The
# brute-force references below build them as matrices, independently of the closed forms.
NOISE_W = (2.0, 1.0, 0.0, 1.0)  # class 2 is never made by noise


def m_step_matrix(sched: CategoricalScheduler, t: int, m: torch.Tensor) -> torch.Tensor:
    n = sched.num_classes
    beta = float(sched.betas[t])
    return (1 - beta) * torch.eye(n, dtype=torch.float64) + beta * torch.ones(n, 1, dtype=torch.float64) * m


def m_product(sched: CategoricalScheduler, s: int, t: int, m: torch.Tensor) -> torch.Tensor:
    out = torch.eye(sched.num_classes, dtype=torch.float64)
    for k in range(s + 1, t + 1):
        out = out @ m_step_matrix(sched, k, m)
    return out


def _m() -> torch.Tensor:
    w = torch.tensor(NOISE_W, dtype=torch.float64)
    return w / w.sum()


def test_noise_weights_closed_form_and_prior() -> None:
    sched = CategoricalScheduler(num_classes=4, num_train_timesteps=25, noise_weights=NOISE_W)
    m = _m()
    torch.testing.assert_close(sched.noise_probs, m)
    x0 = torch.arange(4).view(4, 1, 1)
    for t in (1, 5, 13, 25):
        got = sched.q_probs(sched.one_hot(x0, torch.float64), t - 1)[:, :, 0]
        torch.testing.assert_close(got, m_product(sched, 0, t, m), rtol=1e-9, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    prior = sched.sample_prior((1, 1, 40000), generator=g)
    hist = torch.bincount(prior.reshape(-1), minlength=4).double() / 40000
    assert hist[2] == 0
    assert torch.all((hist - m).abs() < 5 * torch.sqrt(m * (1 - m) / 40000) + 1e-9), hist


def test_noise_weights_add_noise_matches_sequential_sampling_and_never_makes_the_zero_class() -> None:
    sched = CategoricalScheduler(num_classes=4, num_train_timesteps=30, noise_weights=NOISE_W)
    m = _m()
    g = torch.Generator().manual_seed(1)
    n_vox = 40000
    for d in (0, 2):
        x0 = torch.full((1, 1, n_vox), d, dtype=torch.long)
        for t in (1, 9, 30):
            direct = sched.add_noise(x0, None, t - 1, generator=g)[0, 0]
            hist = torch.bincount(direct, minlength=4).double() / n_vox
            p = m_product(sched, 0, t, m)[d]
            sigma = torch.sqrt(p * (1 - p) / n_vox)
            assert torch.all((hist - p).abs() < 5 * sigma + 1e-9), (d, t, hist, p)
            if d != 2:
                assert int((direct == 2).sum()) == 0


def test_noise_weights_posterior_equals_bayes_rule_and_keeps_marginals() -> None:
    sched = CategoricalScheduler(num_classes=4, num_train_timesteps=12, noise_weights=NOISE_W)
    m, n = _m(), 4
    xt, x0 = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    xt, x0 = xt.reshape(-1, 1, 1), x0.reshape(-1, 1, 1)
    checked = 0
    for t in range(1, 13):
        for s in sorted({t - 1, 0, t // 2}):
            if s >= t:
                continue
            got = sched.q_posterior(xt, x0, t - 1, s - 1)[:, :, 0].double()
            q_s0, q_ts, q_t0 = m_product(sched, 0, s, m), m_product(sched, s, t, m), m_product(sched, 0, t, m)
            for row in range(n * n):
                j, d = int(xt[row]), int(x0[row])
                if q_t0[d, j] == 0:  # x_t = 2 cannot come from x_0 != 2
                    assert j == 2 and d != 2
                    continue
                brute = torch.stack([q_ts[k, j] * q_s0[d, k] / q_t0[d, j] for k in range(n)])
                torch.testing.assert_close(got[row], brute, atol=1e-6, rtol=1e-5)
                checked += 1
            for d in range(n):  # sum_{x_t} q(x_s | x_t, x_0) q(x_t | x_0) = q(x_s | x_0)
                rows = [r for r in range(n * n) if int(x0[r]) == d and q_t0[d, int(xt[r])] > 0]
                mix = sum(q_t0[d, int(xt[r])] * got[r] for r in rows)
                torch.testing.assert_close(mix, q_s0[d], atol=1e-6, rtol=0)
    assert checked > 100


def test_noise_weights_model_distribution_marginalises_over_possible_classes() -> None:
    """p_theta(x_s | x_t) = sum over x0 classes that could have given x_t, renormalised."""
    sched = CategoricalScheduler(num_classes=4, num_train_timesteps=40, noise_weights=NOISE_W)
    m, n = _m(), 4
    g = torch.Generator().manual_seed(3)
    xt = torch.tensor([[[0, 1, 2, 3, 2, 0]]]).expand(5, 1, 6).contiguous()
    logits = torch.randn(5, n, 6, generator=g, dtype=torch.float64) * 2
    f = torch.softmax(logits, 1)
    for t, s in [(1, 0), (17, 16), (40, 39), (40, 10), (25, 0)]:
        got = sched.model_log_probs(logits, xt, t - 1, s - 1).exp()
        assert torch.isfinite(got).all()
        q_s0, q_ts, q_t0 = m_product(sched, 0, s, m), m_product(sched, s, t, m), m_product(sched, 0, t, m)
        for b in range(5):
            for v in range(6):
                j = int(xt[b, 0, v])
                ok = [d for d in range(n) if q_t0[d, j] > 0]
                brute = sum(
                    f[b, d, v] * torch.stack([q_ts[k, j] * q_s0[d, k] / q_t0[d, j] for k in range(n)])
                    for d in ok
                ) / sum(f[b, d, v] for d in ok)
                torch.testing.assert_close(got[b, :, v], brute, atol=1e-10, rtol=1e-8)
        # a voxel showing the never-noised class stays that class
        assert torch.allclose(got[:, 2, 2], torch.ones(5, dtype=torch.float64))


def test_uniform_noise_weights_match_the_default() -> None:
    a = CategoricalScheduler(num_classes=5, num_train_timesteps=20)
    b = CategoricalScheduler(num_classes=5, num_train_timesteps=20, noise_weights=[3.0] * 5)
    g = torch.Generator().manual_seed(4)
    xt = torch.randint(0, 5, (3, 1, 7), generator=g)
    logits = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    for t, s in [(19, 3), (5, -1)]:
        torch.testing.assert_close(a.model_log_probs(logits, xt, t, s), b.model_log_probs(logits, xt, t, s))
        torch.testing.assert_close(a.q_posterior(xt, xt.flip(-1), t, s), b.q_posterior(xt, xt.flip(-1), t, s))


@pytest.mark.parametrize(
    ("weights", "words"),
    [([1.0, 1.0], "4 finite non-negative"), ([1.0, -1.0, 1.0, 1.0], "non-negative"),
     ([0.0, 0.0, 5.0, 0.0], "at least two"), ([1.0, float("nan"), 1.0, 1.0], "finite"),
     (2.0, "4 numbers"), (["a", 1, 1, 1], "4 numbers")],
)
def test_bad_noise_weights_raise(weights: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        CategoricalScheduler(num_classes=4, num_train_timesteps=10, noise_weights=weights)
