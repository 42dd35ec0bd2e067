"""Tiled encoding and decoding with overlap and Gaussian blending, and a seam measure.

Volumes larger than the training crop are cut into overlapping tiles; each tile is encoded (or
decoded) alone and the results are blended with Gaussian importance weights (MONAI's
``compute_importance_map``, the weighting of ``sliding_window_inference``). Encoding blends the
pre-quantisation encodings and quantises once, so the codes are chosen on the blended field.

Tiles are aligned to the downsampling factor, so a latent tile corresponds exactly to an image
tile. Peak memory scales with the tile, not the volume; only the blended output is full size.

Quantisation agrees with the models' own codec: ``tiled_decode(model, z)`` snaps ``z`` to the
codebook first (``quantize=True``, the default of ``decode_stage_2_outputs`` too), so for any
latent ``tiled_decode(model, z, quantize=q)`` equals ``model.decode_stage_2_outputs(z, quantize=q)``
within the tiling tolerance. Quantisation is per latent voxel, so it is applied once to the
whole latent before tiling. Latents are unscaled (divide a diffusion output by ``scale_factor``).
"""

from __future__ import annotations

import itertools
from typing import Protocol

import torch
from monai.data.utils import compute_importance_map
from tqdm.auto import tqdm

from ._inputs import check_image, check_latent
from .exceptions import ConfigError, InputShapeError

__all__ = ["TiledCodec", "seam_ratio", "tile_starts", "tiled_decode", "tiled_encode"]


class TiledCodec(Protocol):
    """What the tiler needs from a model (both :class:`VQGAN` and :class:`HDRAutoencoder`)."""

    downsample_factor: int
    latent_channels: int

    def encode_pre_quant(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor: ...
    def quantize(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...
    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor: ...


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start indices of tiles of length ``tile`` covering ``[0, size)`` with at least ``overlap``.

    The last tile is flush with the end; tiles are spread evenly. ``tile >= size`` gives ``[0]``.
    """
    if tile >= size:
        return [0]
    if not 0 <= overlap < tile:
        raise ConfigError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    stride = tile - overlap
    n = -(-(size - tile) // stride) + 1
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _check_tiling(tile: int, overlap: int, factor: int) -> None:
    if tile <= 0 or tile % factor:
        raise ConfigError(
            f"tile must be a positive multiple of the downsampling factor {factor}, got {tile}; "
            f"nearest: {factor * max(1, round(tile / factor))}"
        )
    if overlap < 0 or overlap % factor or overlap >= tile:
        raise ConfigError(
            f"overlap must be a multiple of {factor} in [0, tile={tile}), got {overlap}; "
            f"e.g. {factor * max(0, min(round(overlap / factor), tile // factor - 1))}"
        )


def _blend(
    run,  # callable(slices_in) -> tensor tile
    in_shape: tuple[int, ...],
    out_spatial: tuple[int, ...],
    out_channels: int,
    scale_in_to_out: float,
    tile_in: int,
    overlap_in: int,
    sigma_scale: float,
    margin_out: int,
    like: torch.Tensor,
    progress: bool,
) -> torch.Tensor:
    spatial = in_shape[2:]
    starts = [tile_starts(s, tile_in, overlap_in) for s in spatial]
    sizes = [min(tile_in, s) for s in spatial]
    out_sizes = [round(s * scale_in_to_out) for s in sizes]
    weight = compute_importance_map(out_sizes, mode="gaussian", sigma_scale=sigma_scale, device=like.device)
    weight = weight.to(like.dtype).clamp_min(1e-6)
    acc = like.new_zeros((in_shape[0], out_channels, *out_spatial))
    norm = like.new_zeros(tuple(out_spatial))
    combos = list(itertools.product(*starts))
    for st in tqdm(combos, disable=not progress, desc="tiles", leave=False):
        sl_in = tuple(slice(a, a + n) for a, n in zip(st, sizes, strict=True))
        y = run(sl_in)
        sl_out = tuple(
            slice(round(a * scale_in_to_out), round(a * scale_in_to_out) + n)
            for a, n in zip(st, out_sizes, strict=True)
        )
        w = weight
        if margin_out > 0:
            # Drop a halo at tile edges inside the volume: those voxels saw zero padding instead of
            # their true neighbours. Edges on the volume boundary are kept.
            w = weight.clone()
            for ax, (s_out, full) in enumerate(zip(sl_out, out_spatial, strict=True)):
                idx = [slice(None)] * len(out_spatial)
                if s_out.start > 0:
                    idx[ax] = slice(0, margin_out)
                    w[tuple(idx)] = 0.0
                if s_out.stop < full:
                    idx[ax] = slice(s_out.stop - s_out.start - margin_out, None)
                    w[tuple(idx)] = 0.0
        acc[(slice(None), slice(None), *sl_out)] += y * w
        norm[sl_out] += w
    return acc / norm


def _margin(overlap: int, margin: int | None, factor: int) -> int:
    m = overlap // 4 if margin is None else margin
    if m < 0 or 2 * m > overlap:
        raise ConfigError(f"margin must be in [0, overlap / 2 = {overlap // 2}], got {m}")
    return m


@torch.no_grad()
def tiled_encode(
    model: TiledCodec,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    tile: int,
    overlap: int,
    sigma_scale: float = 0.125,
    margin: int | None = None,
    quantize: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Encode a large volume tile by tile.

    Args:
        model: A :class:`TiledCodec` (VQGAN or HDRAutoencoder), in eval mode.
        x: ``(B, 1, X, Y, Z)`` in [-1, 1], finite; sizes divisible by the downsampling factor.
        labels: Optional label map of the same spatial size (HDR model only).
        tile: Image tile edge (multiple of the factor), e.g. the training crop.
        overlap: Image overlap between neighbouring tiles (multiple of the factor).
        sigma_scale: Gaussian sigma as a fraction of the tile (MONAI's default 0.125).
        margin: Image voxels dropped at each tile edge that lies inside the volume (a halo, so
            that zero padding at tile borders does not leak into the result); default
            ``overlap // 4``; at most ``overlap / 2``.
        quantize: Apply the bottleneck (codes / KL mean) to the blended encodings.
        progress: Show a tqdm bar.

    Returns:
        Latents ``(B, C, X/f, Y/f, Z/f)``.
    """
    f = model.downsample_factor
    _check_tiling(tile, overlap, f)
    check_image(x, factor=f)  # shape, dtype and finiteness, once for the whole volume
    lab = labels if labels is None or labels.ndim == 5 else labels.unsqueeze(1)

    def run(sl: tuple[slice, ...]) -> torch.Tensor:
        xt = x[(slice(None), slice(None), *sl)]
        lt = None if lab is None else lab[(slice(None), slice(None), *sl)]
        return model.encode_pre_quant(xt, lt) if lt is not None else model.encode_pre_quant(xt)

    probe = run(tuple(slice(0, min(tile, s)) for s in x.shape[2:]))
    h = _blend(run, tuple(x.shape), tuple(s // f for s in x.shape[2:]), probe.shape[1], 1.0 / f,
               tile, overlap, sigma_scale, _margin(overlap, margin, f) // f, probe, progress)
    return model.quantize(h)[0] if quantize else h


@torch.no_grad()
def tiled_decode(
    model: TiledCodec,
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    tile: int,
    overlap: int,
    sigma_scale: float = 0.125,
    margin: int | None = None,
    quantize: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Decode large latents tile by tile (tile and overlap given in image voxels).

    Args:
        model: A :class:`TiledCodec`, in eval mode.
        z: Unscaled latents ``(B, C, x, y, z)``, finite.
        labels: Optional label map at image resolution ``(B, 1, f x, f y, f z)`` (HDR model only).
        tile: Image tile edge (multiple of the factor).
        overlap: Image overlap (multiple of the factor).
        sigma_scale: Gaussian sigma as a fraction of the tile.
        margin: Image voxels dropped at each tile edge inside the volume; default ``overlap // 4``.
        quantize: Snap ``z`` to the codebook before decoding (VQ models; a KL model ignores it),
            exactly as ``decode_stage_2_outputs(z, quantize=...)`` does, with the same default.
        progress: Show a tqdm bar.

    Returns:
        Images ``(B, 1, f x, f y, f z)``.
    """
    f = model.downsample_factor
    _check_tiling(tile, overlap, f)
    check_latent(z, channels=model.latent_channels)
    if quantize:
        z = model.quantize(z)[0]
    lab = labels if labels is None or labels.ndim == 5 else labels.unsqueeze(1)
    if lab is not None and tuple(lab.shape[2:]) != tuple(s * f for s in z.shape[2:]):
        raise InputShapeError(
            f"labels spatial size must be {tuple(s * f for s in z.shape[2:])} (latent x {f}), got {tuple(lab.shape[2:])}"
        )

    def run(sl: tuple[slice, ...]) -> torch.Tensor:
        zt = z[(slice(None), slice(None), *sl)]
        if lab is None:
            return model.decode(zt)
        sl_img = tuple(slice(s.start * f, s.stop * f) for s in sl)
        return model.decode(zt, lab[(slice(None), slice(None), *sl_img)])

    return _blend(run, tuple(z.shape), tuple(s * f for s in z.shape[2:]), 1, float(f),
                  tile // f, overlap // f, sigma_scale, _margin(overlap, margin, f), z, progress)


def seam_ratio(volume: torch.Tensor, *, tile: int, overlap: int) -> float:
    """Gradient energy on tile-edge planes divided by that on all other planes.

    For each axis, the squared forward difference across every plane where a tile starts or ends
    (as laid out by :func:`tile_starts`) is averaged and compared with the mean over the other
    planes. A seamless volume gives a ratio near the same value as the untiled reconstruction;
    visible seams raise it well above 1.

    Args:
        volume: ``(B, C, X, Y, Z)``.
        tile: Image tile edge used for tiling.
        overlap: Image overlap used for tiling.

    Returns:
        Ratio (float); ``nan`` if no axis has tile edges.
    """
    edge_e, edge_n, rest_e, rest_n = 0.0, 0, 0.0, 0
    for axis in range(3):
        size = volume.shape[axis + 2]
        starts = tile_starts(size, tile, overlap)
        edges = {s for s in starts if s > 0} | {s + tile for s in starts if s + tile < size}
        if not edges:
            continue
        d = torch.diff(volume.double(), dim=axis + 2).pow(2)  # d[i] = v[i+1] - v[i]
        per_plane = d.movedim(axis + 2, 0).reshape(size - 1, -1).mean(1)
        mask = torch.zeros(size - 1, dtype=torch.bool)
        for e in edges:
            mask[e - 1] = True  # the difference across the plane between e-1 and e
        edge_e += float(per_plane[mask].sum())
        edge_n += int(mask.sum())
        rest_e += float(per_plane[~mask].sum())
        rest_n += int((~mask).sum())
    if edge_n == 0 or rest_n == 0:
        return float("nan")
    return (edge_e / edge_n) / max(rest_e / rest_n, 1e-30)
