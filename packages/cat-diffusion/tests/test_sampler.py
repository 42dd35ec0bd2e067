"""Golden-value full sampling loops against a brute-force Markov-chain reference.

The network is a fixed per-voxel table (logits depend only on the voxel's own x_t and on t), so
voxels are independent and the exact law of the sampler's output is computable by propagating
the distribution of one voxel through the reverse chain. The reverse kernels are built here from
single-step transition matrices and Bayes' rule, independently of the scheduler's closed forms.
"""

from __future__ import annotations

import pytest
import torch
from cat_diffusion import CategoricalSampler, CategoricalScheduler
from cat_diffusion.exceptions import ShapeError

N, T = 3, 6


def step_matrix(betas: torch.Tensor, t: int) -> torch.Tensor:
    b = float(betas[t])
    return (1 - b) * torch.eye(N, dtype=torch.float64) + b / N


def product(betas: torch.Tensor, s: int, t: int) -> torch.Tensor:
    m = torch.eye(N, dtype=torch.float64)
    for k in range(s + 1, t + 1):
        m = m @ step_matrix(betas, k)
    return m


class TableModel:
    """logits(x_t = j, t) = table[t + 1, j] (paper index t + 1): a deterministic per-voxel network."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(T + 1, N, N, generator=g, dtype=torch.float64) * 1.5
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *, context: object = None) -> torch.Tensor:
        self.calls += 1
        assert context is None and bool((t == t[0]).all())
        table = self.table[int(t[0]) + 1].to(x.dtype)
        return torch.einsum("bj...,jk->bk...", x, table)


def reference_law(model: TableModel, betas: torch.Tensor, grid: list[int], final: str) -> torch.Tensor:
    """Exact law of one output voxel: x_T uniform, reverse kernels by brute force (paper indices)."""
    pi = torch.full((N,), 1.0 / N, dtype=torch.float64)
    for i, t in enumerate(grid):
        s = grid[i + 1] if i + 1 < len(grid) else 0
        f = torch.softmax(model.table[t], dim=1)  # f[j, d] = p(x0 = d | x_t = j)
        kernel = torch.zeros(N, N, dtype=torch.float64)
        if s == 0:
            for j in range(N):
                if final == "argmax":
                    kernel[j, int(f[j].argmax())] = 1.0
                else:
                    kernel[j] = f[j]
        else:
            q_s0, q_ts, q_t0 = product(betas, 0, s), product(betas, s, t), product(betas, 0, t)
            for j in range(N):
                for k in range(N):
                    kernel[j, k] = sum(f[j, d] * q_ts[k, j] * q_s0[d, k] / q_t0[d, j] for d in range(N))
        pi = pi @ kernel
    return pi


@pytest.mark.parametrize(
    ("kind", "final"), [("ancestral", "argmax"), ("ancestral", "sample"), ("fast", "argmax"), ("fast", "sample")]
)
def test_full_loop_matches_brute_force_law(kind: str, final: str) -> None:
    sched = CategoricalScheduler(num_classes=N, num_train_timesteps=T, final_step=final)  # type: ignore[arg-type]
    sampler = CategoricalSampler(scheduler=sched)
    model = TableModel()
    n_vox = 60000
    g = torch.Generator().manual_seed(7)
    if kind == "ancestral":
        out = sampler.ancestral(model, shape=(1, 1, n_vox), generator=g)
        grid = list(range(T, 0, -1))
    else:
        out = sampler.fast(model, num_steps=3, shape=(1, 1, n_vox), generator=g)
        grid = [6, 3, 1]  # public round(linspace(5, 0, 3)) = [5, 2, 0], plus one
    assert [int(v) + 1 for v in sched.timesteps] == grid
    assert model.calls == len(grid)
    assert out.dtype == torch.long and out.shape == (1, 1, n_vox)
    law = reference_law(model, sched.betas, grid, final)
    hist = torch.bincount(out.flatten(), minlength=N).double() / n_vox
    sigma = torch.sqrt(law * (1 - law) / n_vox) + 1e-12
    assert torch.all((hist - law).abs() <= 5 * sigma), (hist, law)


def test_sampler_is_reproducible_with_a_generator_and_validates_shape() -> None:
    sched = CategoricalScheduler(num_classes=N, num_train_timesteps=T)
    sampler = CategoricalSampler(scheduler=sched)
    a = sampler.fast(TableModel(), num_steps=2, shape=(2, 1, 5, 5), generator=torch.Generator().manual_seed(1))
    b = sampler.fast(TableModel(), num_steps=2, shape=(2, 1, 5, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ShapeError, match=r"\(B, 1, \*spatial\)"):
        sampler.ancestral(TableModel(), shape=(2, 5, 5))
