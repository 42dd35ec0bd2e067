"""Expected Euler characteristic and component-count guidance, against skimage, scipy and
brute-force enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from cat_diffusion import count_guidance, expected_euler_characteristic
from cat_diffusion.exceptions import ConfigError, ShapeError
from scipy import ndimage
from skimage.measure import euler_number


@pytest.mark.parametrize("density", [0.02, 0.1, 0.3, 0.6, 0.9])
def test_binary_maps_match_skimage(density: float) -> None:
    rng = np.random.default_rng(int(density * 100))
    maps = rng.random((8, 9, 7, 6)) < density
    got = expected_euler_characteristic(torch.from_numpy(maps).double()).numpy()
    want = [euler_number(m, connectivity=3) for m in maps]
    assert np.array_equal(got, want), (got, want)


def test_separate_blobs_count_their_26_connected_components() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = np.zeros((12, 12, 12), bool)
        for _ in range(int(rng.integers(0, 5))):
            c = rng.integers(1, 10, 3)
            m[c[0] : c[0] + rng.integers(1, 3), c[1] : c[1] + 2, c[2]] = True
        n = ndimage.label(m, np.ones((3, 3, 3), bool))[1]
        assert float(expected_euler_characteristic(torch.from_numpy(m[None]).float())[0]) == n


def test_expectation_is_exact_by_enumeration() -> None:
    """Independent voxels on a 2x2x3 grid: the mean over all 4096 maps, weighted by probability."""
    g = torch.Generator().manual_seed(0)
    p = torch.rand(1, 2, 2, 3, generator=g, dtype=torch.float64)
    flat = p.reshape(-1).numpy()
    want = 0.0
    for bits in itertools.product((0, 1), repeat=flat.size):
        b = np.array(bits, bool)
        weight = np.prod(np.where(b, flat, 1 - flat))
        want += weight * euler_number(b.reshape(2, 2, 3), connectivity=3)
    assert float(expected_euler_characteristic(p)[0]) == pytest.approx(want, abs=1e-12)


def _logits(p_on: torch.Tensor) -> torch.Tensor:
    """Two-class logits (off, on) with P(on) = p_on, shape (1, 2, *S)."""
    on = torch.logit(p_on.clamp(1e-6, 1 - 1e-6))
    return torch.stack([torch.zeros_like(on), on])[None]


def test_guidance_merges_a_broken_piece_and_drops_a_spare_one() -> None:
    p = torch.full((9, 9, 9), 1e-3, dtype=torch.float64)
    p[2, 4, 4] = p[4, 4, 4] = 0.999  # one piece broken by the gap at (3, 4, 4)
    p[3, 4, 4] = 0.3
    p[7, 1, 1] = 0.3  # a far candidate
    p[4, 4, 5] = 0.3  # a candidate beside the piece
    logits = _logits(p)
    one = count_guidance(logits, 1, torch.tensor([1.0]), 1.0)
    d = (one - logits)[0, 1] - (one - logits)[0, 0]  # change of the "on" log-odds
    assert d[3, 4, 4] > 0.1 and d[7, 1, 1] < -0.1  # fill the gap, drop the spare
    three = count_guidance(logits, 1, torch.tensor([3.0]), 1.0)
    d3 = (three - logits)[0, 1] - (three - logits)[0, 0]
    assert d3[3, 4, 4] < 0 and d3[7, 1, 1] > 0  # more pieces wanted: the other way round
    assert abs(float(d[4, 4, 5])) < 0.05 * abs(float(d[7, 1, 1]))  # beside a piece: ~no change


def test_guidance_off_and_no_target_leave_the_logits() -> None:
    logits = torch.randn(2, 3, 4, 4, 4)
    assert count_guidance(logits, 2, torch.tensor([1.0, 2.0]), 0.0) is logits
    out = count_guidance(logits, 2, torch.tensor([-1.0, 2.0]), 5.0)
    assert torch.equal(out[0], logits[0]) and not torch.equal(out[1], logits[1])
    assert not out.requires_grad


def test_bad_input_is_named() -> None:
    with pytest.raises(ShapeError, match="probs must be"):
        expected_euler_characteristic(torch.rand(4, 4, 4))
    with pytest.raises(ShapeError, match="counts has 1 entries for a batch of 2"):
        count_guidance(torch.randn(2, 3, 4, 4, 4), 1, torch.tensor([1.0]), 1.0)
    with pytest.raises(ConfigError, match="class_index"):
        count_guidance(torch.randn(1, 3, 4, 4, 4), 3, torch.tensor([1.0]), 1.0)
    with pytest.raises(ConfigError, match="weight"):
        count_guidance(torch.randn(1, 3, 4, 4, 4), 1, torch.tensor([1.0]), -1.0)
