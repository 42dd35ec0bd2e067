"""Component-count guidance for one class of a categorical sampler (not in the GuideGen paper).

The number of connected pieces of a class (tumours, say) is a global property, while a categorical
sampler draws every voxel on its own. A rare class whose voxels are shown in ``x_t`` for good (as
under noise that never makes it) then often ends with an extra piece: two voxels drawn in the same
step at two candidate places, or one tumour broken by a one-voxel gap.

The Euler characteristic of a voxel set is a sum of local terms, so its *expectation* under
independent voxels is exact and differentiable. Take the union of the closed unit cubes of the
voxels (26-connectivity: cubes that share a corner are joined). Then

    chi = V - E + F - C

where ``V``, ``E``, ``F`` and ``C`` count the vertices, edges, faces and cubes of the union. A
vertex belongs to it when any of its 8 voxels is on, an edge when any of its 4, a face when either
of its 2, and a cube when its voxel is on. With voxel ``i`` on with probability ``p_i``,
independently, ``P(vertex) = 1 - prod_8 (1 - p_i)`` and so on. Summing these gives ``E[chi]``, and
:func:`expected_euler_characteristic` computes it with shifted products.

``chi = components - tunnels + cavities``. A blob with no tunnel and no cavity has ``chi = 1``, so
for such blobs ``E[chi]`` is the expected number of pieces.

:func:`count_guidance` nudges the x0 logits down the gradient of ``(E[chi] - K)^2``, the
probabilities being the sampler's x0 prediction for the class. The gradient carries the topology:
- for a voxel far from the shown pieces, turning it on adds a piece;
- for the gap voxel between two pieces, it removes one;
- for a voxel next to one piece, it changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .exceptions import ConfigError, ShapeError

__all__ = ["count_guidance", "expected_euler_characteristic"]


def _pairs(a: Tensor, dim: int) -> Tensor:
    """Products of neighbours along ``dim`` (a window of 2, one shorter)."""
    n = a.shape[dim]
    return a.narrow(dim, 0, n - 1) * a.narrow(dim, 1, n - 1)


def _inner(a: Tensor, dim: int) -> Tensor:
    """Drop the padding along ``dim``."""
    return a.narrow(dim, 1, a.shape[dim] - 2)


def expected_euler_characteristic(probs: Tensor) -> Tensor:
    """Expected Euler characteristic of the "on" voxels (26-connectivity) of independent voxels.

    Args:
        probs: ``(B, X, Y, Z)`` probabilities in ``[0, 1]`` that each voxel is on. A binary map
            gives its Euler characteristic exactly (as ``skimage.measure.euler_number`` with
            ``connectivity=3``).

    Returns:
        ``(B,)``, differentiable in ``probs``. For blobs without tunnels or cavities, the expected
        number of 26-connected components.
    """
    if probs.ndim != 4:
        raise ShapeError(
            f"probs must be (B, X, Y, Z) voxel probabilities, got shape {tuple(probs.shape)}."
        )
    if not probs.dtype.is_floating_point:
        raise ShapeError(f"probs must be floating point, got {probs.dtype}.")
    q = torch.nn.functional.pad(1 - probs, (1, 1, 1, 1, 1, 1), value=1.0)
    qx, qy, qz = _pairs(q, 1), _pairs(q, 2), _pairs(q, 3)
    dims = (1, 2, 3)
    vertices = (1 - _pairs(_pairs(qx, 2), 3)).sum(dims)
    edges = (
        (1 - _inner(_pairs(qy, 3), 1)).sum(dims)  # along x: 4 voxels around it in y, z
        + (1 - _inner(_pairs(qx, 3), 2)).sum(dims)
        + (1 - _inner(_pairs(qx, 2), 3)).sum(dims)
    )
    faces = (
        (1 - _inner(_inner(qx, 2), 3)).sum(dims)  # normal x: the 2 voxels on either side in x
        + (1 - _inner(_inner(qy, 1), 3)).sum(dims)
        + (1 - _inner(_inner(qz, 1), 2)).sum(dims)
    )
    return vertices - edges + faces - probs.sum(dims)


def count_guidance(logits: Tensor, class_index: int, counts: Tensor, weight: float) -> Tensor:
    """Logits moved towards maps whose ``class_index`` pieces number ``counts``.

    Returns ``logits - weight * d/d(logits) sum_b (E[chi_b] - counts_b)^2``. ``E[chi_b]`` is
    :func:`expected_euler_characteristic` of ``softmax(logits)[:, class_index]``. Samples whose
    count is negative (no target) keep their logits.

    Args:
        logits: x0 logits ``(B, N, X, Y, Z)``.
        class_index: the counted class, in ``[0, N)``.
        counts: ``(B,)`` wanted numbers of pieces (a negative entry: none).
        weight: guidance weight (0: the logits unchanged).
    """
    if logits.ndim != 5:
        raise ShapeError(f"logits must be (B, N, X, Y, Z), got shape {tuple(logits.shape)}.")
    if not 0 <= class_index < logits.shape[1]:
        raise ConfigError(f"class_index must be in [0, {logits.shape[1]}), got {class_index}.")
    counts = torch.as_tensor(counts, dtype=logits.dtype, device=logits.device).reshape(-1)
    if counts.shape[0] != logits.shape[0]:
        raise ShapeError(f"counts has {counts.shape[0]} entries for a batch of {logits.shape[0]}.")
    if weight < 0 or weight != weight:
        raise ConfigError(f"weight must be >= 0, got {weight}.")
    if weight == 0:
        return logits
    with torch.enable_grad():
        leaf = logits.detach().requires_grad_(True)
        chi = expected_euler_characteristic(torch.softmax(leaf, dim=1)[:, class_index])
        loss = ((chi - counts) ** 2 * (counts >= 0)).sum()
        (grad,) = torch.autograd.grad(loss, leaf)
    return logits - weight * grad
