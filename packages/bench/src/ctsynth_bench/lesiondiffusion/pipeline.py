"""LesionDiffusion in CT space: report -> box -> model-grid crop -> mask -> inpaint -> paste back.

The networks of a :class:`LesionSystem` work on a cube of ``preset.crop_size`` voxels at an
isotropic spacing chosen by ``preset.model_spacing(box extent)``. This module does everything
around them, for a CT of any size and spacing:

1. a validated ``report_bbox.Report`` (from a file, drawn from free choices, or written by an LLM);
2. its box, placed by report-bbox's location rules in the organ map (on the organ's bounding region
   only, so the distance transforms do not grow with the CT);
3. the model grid around the box centre: CT resampled linearly (air outside the volume), organs
   by nearest neighbour, the box analytically;
4. ``system.sample_mask`` then ``system.inpaint``;
5. mask (linear, thresholded at 0.5) and HU (linear) resampled back onto the CT's own voxels of a
   region around the lesion, and pasted with ``lesion_inpaint.paste_back`` (feathered). Every
   voxel outside the paste footprint keeps its input value bit for bit.

Work is done in a RAS *view* of the input arrays (flips and transposes, no copy), so the output
keeps the input's voxel order, affine and header. :func:`synthesize_cases` writes the rule-based
set's nnU-Net layout, resumably and split across ranks. Torch is imported only when a system runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import report_bbox
from scipy import ndimage

from ..exceptions import BenchError
from ._io import atomic_json

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CTInput",
    "LesionResult",
    "LesionSystem",
    "ReportSource",
    "SynthSummary",
    "SynthesisError",
    "load_ct_input",
    "place_lesion",
    "synthesize_cases",
    "synthesize_lesion",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Same tolerance as the data loaders: affines equal within 0.001 mm per entry.
AFFINE_ATOL = 1e-3
#: Full-weight voxels around the mask and linear fall-off voxels of the paste (CT voxels).
PASTE_DILATION = 1
PASTE_FEATHER = 2
AIR_HU = -1024.0


class SynthesisError(BenchError):
    """An input the LesionDiffusion pipeline cannot use (files, geometry, organ, report, options)."""


@runtime_checkable
class LesionSystem(Protocol):
    """What the pipeline needs of a LesionDiffusion system (see ``system.LesionDiffusionSystem``).

    ``preset`` has ``crop_size`` (S), ``model_spacing(extent_mm) -> mm``, ``steps``, ``guidance``
    and ``name``. Tensors are ``(1, 1, S, S, S)`` on the model grid.
    """

    preset: Any
    text_encoder_id: str
    run_dir: Path | None

    def sample_mask(
        self,
        *,
        organs: torch.Tensor,
        target_organ: torch.Tensor,
        bbox: torch.Tensor,
        report: report_bbox.Report,
        generator: torch.Generator,
        steps: int | None = None,
        guidance: float | None = None,
        text: bool = True,
    ) -> torch.Tensor:
        """uint8 lesion mask inside ``bbox``; organs int64, target_organ and bbox bool."""
        ...

    def inpaint(
        self,
        *,
        ct: torch.Tensor,
        mask: torch.Tensor,
        report: report_bbox.Report,
        generator: torch.Generator,
        steps: int | None = None,
        guidance: float | None = None,
        text: bool = True,
    ) -> torch.Tensor:
        """float32 HU crop; equal to ``ct`` away from ``mask``."""
        ...


# ------------------------------------------------------------------------------------- input


@dataclass(frozen=True)
class CTInput:
    """A CT with its organ map, in the input's own voxel order, and a RAS view of both.

    Attributes:
        name: case name (file stem).
        ct: HU as stored (after NIfTI scaling), shape of the input file.
        organs: integer TotalSegmentator v2 ids, same shape.
        affine: 4x4 voxel -> world (mm) of the input.
        header: the CT's NIfTI header (copied into the output), or ``None`` (one is made).
        organs_header: the organ map's header, or ``None``.
        ornt: nibabel orientation transform from the input's voxel order to RAS.
    """

    name: str
    ct: np.ndarray
    organs: np.ndarray
    affine: np.ndarray
    header: Any
    organs_header: Any
    ornt: np.ndarray

    def ras(self, array: np.ndarray) -> np.ndarray:
        """A RAS view (no copy) of an array in the input's voxel order; writes go through."""
        from nibabel.orientations import apply_orientation

        return apply_orientation(array, self.ornt)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the RAS axes."""
        zooms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        order = np.argsort(self.ornt[:, 0]) if self.ornt.size else np.arange(3)
        return tuple(float(zooms[int(i)]) for i in order)  # type: ignore[return-value]

    @property
    def shape_ras(self) -> tuple[int, int, int]:
        return tuple(self.ras(self.ct).shape)  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """A short hash of geometry and a strided sample of the voxels (resume check)."""
        h = hashlib.sha256()
        h.update(np.asarray(self.ct.shape, np.int64).tobytes())
        h.update(np.round(self.affine, 4).astype(np.float64).tobytes())
        step = max(1, self.ct.size // 65536)
        h.update(np.ascontiguousarray(self.ct.reshape(-1)[::step]).astype(np.float32).tobytes())
        h.update(np.ascontiguousarray(self.organs.reshape(-1)[::step]).astype(np.int32).tobytes())
        return h.hexdigest()[:16]


def _orientation(affine: np.ndarray) -> np.ndarray:
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return ornt_transform(io_orientation(affine), axcodes2ornt(("R", "A", "S")))


def _read(path: Path, what: str) -> tuple[np.ndarray, Any]:
    import nibabel as nib

    if not path.is_file():
        raise SynthesisError(f"{what} {path} does not exist")
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise SynthesisError(f"{what} {path} is not a NIfTI file (.nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise SynthesisError(
            f"{what} {path} is not a readable NIfTI file ({type(exc).__name__})"
        ) from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise SynthesisError(f"{what} {path} must be a 3D volume, got shape {arr.shape}")
    return np.asarray(arr), img


def load_ct_input(
    ct: str | os.PathLike[str], organs: str | os.PathLike[str], *, name: str | None = None
) -> CTInput:
    """Read and check a CT and its TotalSegmentator v2 organ map (NIfTI files).

    Raises:
        SynthesisError: a missing or unreadable file, not 3D, different shapes or affines (more
            than 0.001 mm per entry), non-integer organ labels, or a CT with no plausible HU.
    """
    ct_path, organs_path = Path(ct), Path(organs)
    ct_arr, ct_img = _read(ct_path, "CT")
    org_arr, org_img = _read(organs_path, "organ map")
    if ct_arr.shape != org_arr.shape:
        raise SynthesisError(
            f"CT {ct_path.name} {ct_arr.shape} and organ map {organs_path.name} "
            f"{org_arr.shape} have different shapes; they must share one voxel grid"
        )
    if not np.allclose(ct_img.affine, org_img.affine, atol=AFFINE_ATOL, rtol=0):
        worst = float(np.abs(ct_img.affine - org_img.affine).max())
        raise SynthesisError(
            f"CT {ct_path.name} and organ map {organs_path.name} have different affines "
            f"(largest difference {worst:.4g} mm, allowed {AFFINE_ATOL}); resample the map "
            "onto the CT grid"
        )
    if org_arr.dtype.kind == "f":
        if not np.all(np.isfinite(org_arr)) or np.any(org_arr != np.round(org_arr)):
            raise SynthesisError(
                f"organ map {organs_path.name} holds non-integer values; "
                "expected TotalSegmentator v2 class ids"
            )
    org_arr = org_arr.astype(np.int16) if org_arr.dtype.kind == "f" else org_arr
    if org_arr.min() < 0 or org_arr.max() > 255:
        raise SynthesisError(
            f"organ map {organs_path.name} holds ids {org_arr.min()}..{org_arr.max()}; "
            "TotalSegmentator v2 ids are 0..117"
        )
    if not np.all(np.isfinite(ct_arr)) or float(ct_arr.min()) > -200 or float(ct_arr.max()) > 32767:
        raise SynthesisError(
            f"CT {ct_path.name} does not look like HU (range {float(ct_arr.min()):g}.."
            f"{float(ct_arr.max()):g}; expected air below -200 HU)"
        )
    affine = np.asarray(ct_img.affine, dtype=np.float64)
    base = ct_path.name.removesuffix(".gz").removesuffix(".nii")
    return CTInput(
        name=name or base,
        ct=ct_arr,
        organs=org_arr,
        affine=affine,
        header=ct_img.header,
        organs_header=org_img.header,
        ornt=_orientation(affine),
    )


def ct_input_from_arrays(
    ct: np.ndarray, organs: np.ndarray, affine: np.ndarray, *, name: str
) -> CTInput:
    """A :class:`CTInput` from in-memory arrays (e.g. ``data.load_case``); no header to copy."""
    if ct.shape != organs.shape or ct.ndim != 3:
        raise SynthesisError(f"CT {ct.shape} and organ map {organs.shape} must be 3D of one shape")
    aff = np.asarray(affine, dtype=np.float64)
    return CTInput(
        name=name,
        ct=np.asarray(ct),
        organs=np.asarray(organs),
        affine=aff,
        header=None,
        organs_header=None,
        ornt=_orientation(aff),
    )


# ------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class ReportSource:
    """Where each case's report comes from: one of a fixed report, free choices, or a writer.

    Attributes:
        report: a fixed report (every case gets it; boxes differ by seed).
        lesion_type: with ``organ``/``fixed``: draw reports by report-bbox's table.
        organ: organ name (aliases accepted).
        fixed: attribute values to keep (``--set ATTR=VALUE``).
        writer: a ``report_bbox.ReportWriter`` (e.g. an LLM) asked per case with the choices above.
    """

    report: report_bbox.Report | None = None
    lesion_type: str | None = None
    organ: str | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    writer: Any = None

    def __post_init__(self) -> None:
        if self.report is not None and (
            self.writer is not None or self.lesion_type or self.organ or self.fixed
        ):
            raise SynthesisError(
                "give either a report or choices (lesion type, organ, --set) / an LLM, not both"
            )
        if self.report is None and self.writer is None and not (self.lesion_type or self.organ):
            raise SynthesisError(
                "no report: give a report file, an organ or lesion type, or an LLM writer"
            )

    def organ_name(self) -> str | None:
        """The organ the reports will name, where it is known before drawing."""
        if self.report is not None:
            return self.report.organ
        if self.organ is not None:
            return report_bbox.resolve_organ(self.organ)
        if self.lesion_type is not None:
            return report_bbox.LESION_TYPES[report_bbox.lesion_type_name(self.lesion_type)].organs[
                0
            ]
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (the resume check compares it)."""
        if self.report is not None:
            return {"report": self.report.to_dict()}
        out: dict[str, Any] = {
            "lesion_type": self.lesion_type,
            "organ": self.organ,
            "fixed": dict(self.fixed),
        }
        if self.writer is not None:
            out["writer"] = type(self.writer).__name__
            out["writer_url"] = getattr(self.writer, "url", None)
        return out

    def draw(self, rng: np.random.Generator) -> report_bbox.Report:
        """One report for a case (writer or table draw; the fixed report as is)."""
        if self.report is not None:
            return self.report
        if self.writer is not None:
            req = report_bbox.ReportRequest(
                lesion_type=self.lesion_type, organ=self.organ, fixed=dict(self.fixed)
            )
            return self.writer.write(req)
        return report_bbox.sample_report(
            rng, lesion_type=self.lesion_type, organ=self.organ, **dict(self.fixed)
        )


def _organ_region(
    organs_ras: np.ndarray, ids: Sequence[int], margin: np.ndarray, *, slab: int = 16
) -> tuple[slice, ...] | None:
    """Bounding region of the organ ids, grown by ``margin`` voxels per axis, or ``None`` if absent.

    The map is scanned in slabs of ``slab`` z-slices, so the temporary masks stay small on a big CT.
    """
    ids_arr = np.asarray(ids)
    spans: list[list[int]] = [[], [], []]
    for z0 in range(0, organs_ras.shape[2], slab):
        block = organs_ras[:, :, z0 : z0 + slab]
        hit = np.isin(block, ids_arr) if len(ids_arr) > 1 else block == ids_arr[0]
        if not hit.any():
            continue
        for ax in range(3):
            other = tuple(a for a in range(3) if a != ax)
            nz = np.flatnonzero(hit.any(axis=other))
            off = z0 if ax == 2 else 0
            spans[ax] += [int(nz[0]) + off, int(nz[-1]) + off]
    if not spans[0]:
        return None
    return tuple(
        slice(
            max(0, min(sp) - int(margin[ax])),
            min(organs_ras.shape[ax], max(sp) + 1 + int(margin[ax])),
        )
        for ax, sp in enumerate(spans)
    )


def check_organ_present(inp: CTInput, organ: str, *, min_voxels: int = 20) -> None:
    """Raise :class:`SynthesisError` unless the organ has at least ``min_voxels`` voxels."""
    ids = report_bbox.organ_ids(organ)
    count = int(np.isin(inp.organs, np.asarray(ids)).sum())
    if count < min_voxels:
        present = sorted(int(v) for v in np.unique(inp.organs) if v)
        names = [report_bbox.TOTALSEG_V2.get(v, str(v)) for v in present]
        raise SynthesisError(
            f"organ {organ!r} (TotalSegmentator v2 ids {list(ids)}) is absent from the organ map of "
            f"{inp.name} ({count} voxels); the map holds: {', '.join(names[:30]) or 'nothing'}"
        )


#: Boxes are placed on the organ map subsampled (integer strides) to about this spacing, so the
#: rules' distance transforms cost the same on a 0.7 mm CT as on a 3 mm one.
PLACEMENT_SPACING_MM = 2.0


def placement_strides(spacing: Sequence[float]) -> np.ndarray:
    """Integer stride per axis that brings ``spacing`` closest to :data:`PLACEMENT_SPACING_MM` (>= 1)."""
    return np.maximum(
        1, np.rint(PLACEMENT_SPACING_MM / np.asarray(spacing, dtype=np.float64))
    ).astype(int)


def place_lesion(
    source: ReportSource, inp: CTInput, rng: np.random.Generator, *, max_reports: int = 20
) -> tuple[report_bbox.Report, report_bbox.BBox]:
    """Draw the report and place its box by report-bbox's rules (box in RAS voxel indices).

    The rules run on the organ's bounding region, grown by the organ's largest allowed lesion and
    subsampled by :func:`placement_strides` (a CT finer than about 1.4 mm is read every 2nd or 3rd
    voxel), so their cost follows the organ's size in mm, not the CT's voxel count. The box found
    there is mapped back to the CT's voxels (corners times the strides).

    Raises:
        SynthesisError: the organ is absent, the report is invalid, or no report fits.
    """
    spacing = np.asarray(inp.spacing)
    stride = placement_strides(spacing)
    organs_ras = inp.ras(inp.organs)
    last: Exception | None = None
    for _ in range(max_reports if source.report is None else 1):
        try:
            report = source.draw(rng)
        except (report_bbox.ReportError, report_bbox.ReportWriterError) as exc:
            raise SynthesisError(f"report: {exc}") from None
        ids = report_bbox.organ_ids(report.organ)
        margin = (
            np.ceil(report_bbox.ORGANS[report.organ].max_lesion_mm / spacing).astype(int)
            + 2 * stride
        )
        region = _organ_region(organs_ras, ids, margin)
        if region is None:
            raise SynthesisError(
                f"organ {report.organ!r} (ids {list(ids)}) is absent from the organ map of {inp.name}"
            )
        sub = np.ascontiguousarray(
            organs_ras[
                tuple(slice(r.start, r.stop, int(k)) for r, k in zip(region, stride, strict=True))
            ]
        )
        try:
            box = report_bbox.sample_bbox(report, sub, tuple(spacing * stride), rng)
        except report_bbox.BBoxError as exc:
            last = exc
            continue
        off = np.array([r.start for r in region])
        shape = np.array(organs_ras.shape)
        lo = off + np.asarray(box.lo) * stride
        hi = np.minimum(off + np.asarray(box.hi) * stride, shape)
        return report, report_bbox.BBox(tuple(int(v) for v in lo), tuple(int(v) for v in hi))
    raise SynthesisError(f"the report cannot fit in {inp.name}: {last}")


# ------------------------------------------------------------------------------- model grid


@dataclass(frozen=True)
class ModelGrid:
    """An isotropic cube of ``size`` voxels at ``spacing_mm``, placed in the CT's RAS voxel grid.

    CT voxel coordinate of model voxel ``j`` along axis ``a``: ``start[a] + j * step[a]``.
    """

    size: int
    spacing_mm: float
    start: np.ndarray  # (3,) float, CT voxel coords of model voxel 0
    step: np.ndarray  # (3,) float, CT voxels per model voxel

    @classmethod
    def around(
        cls, center: Sequence[float], ct_spacing: Sequence[float], spacing_mm: float, size: int
    ) -> ModelGrid:
        step = float(spacing_mm) / np.asarray(ct_spacing, dtype=np.float64)
        start = np.asarray(center, dtype=np.float64) - (size - 1) / 2.0 * step
        return cls(size=int(size), spacing_mm=float(spacing_mm), start=start, step=step)

    def sample(self, volume: np.ndarray, *, order: int, cval: float) -> np.ndarray:
        """Resample a RAS volume onto the grid (only the needed sub-block is read)."""
        end = self.start + (self.size - 1) * self.step
        lo = np.clip(np.floor(np.minimum(self.start, end)).astype(int) - 1, 0, volume.shape)
        hi = np.clip(np.ceil(np.maximum(self.start, end)).astype(int) + 2, 0, volume.shape)
        out_shape = (self.size,) * 3
        if np.any(hi <= lo):
            return np.full(out_shape, cval, dtype=np.float32)
        sub = np.asarray(
            volume[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))], dtype=np.float32
        )
        return ndimage.affine_transform(
            sub,
            self.step,
            offset=self.start - lo,
            output_shape=out_shape,
            order=order,
            mode="constant",
            cval=cval,
            prefilter=False,
        )

    def box_mask(self, box: report_bbox.BBox) -> np.ndarray:
        """bool (S, S, S): model voxels whose centre lies in the box's CT voxels."""
        axes = []
        for a in range(3):
            x = self.start[a] + np.arange(self.size) * self.step[a]
            inside = (x >= box.lo[a] - 0.5) & (x < box.hi[a] - 0.5)
            if not inside.any():  # a box thinner than a model voxel: its nearest model voxel
                inside[int(np.argmin(np.abs(x - (box.lo[a] + box.hi[a] - 1) / 2)))] = True
            axes.append(inside)
        return axes[0][:, None, None] & axes[1][None, :, None] & axes[2][None, None, :]

    def to_ct(
        self,
        array: np.ndarray,
        region: tuple[slice, ...],
        *,
        order: int,
        mode: str,
        cval: float = 0.0,
    ) -> np.ndarray:
        """Resample a model-grid array onto the CT voxels of ``region``."""
        lo = np.array([s.start for s in region], dtype=np.float64)
        shape = tuple(s.stop - s.start for s in region)
        return ndimage.affine_transform(
            np.asarray(array, np.float32),
            1.0 / self.step,
            offset=(lo - self.start) / self.step,
            output_shape=shape,
            order=order,
            mode=mode,
            cval=cval,
            prefilter=False,
        )

    def ct_region(
        self, lo_j: np.ndarray, hi_j: np.ndarray, shape: Sequence[int], pad: int
    ) -> tuple[slice, ...]:
        """CT voxel region covering model voxels ``lo_j..hi_j`` (inclusive) plus ``pad`` voxels."""
        a = self.start + lo_j * self.step
        b = self.start + hi_j * self.step
        lo = np.clip(np.floor(np.minimum(a, b)).astype(int) - pad, 0, shape)
        hi = np.clip(np.ceil(np.maximum(a, b)).astype(int) + pad + 1, 0, shape)
        return tuple(slice(int(x), int(y)) for x, y in zip(lo, hi, strict=True))


# -------------------------------------------------------------------------------- synthesis


@dataclass
class LesionResult:
    """One synthesized lesion, as a change to a region of the CT (RAS voxel indices).

    Attributes:
        report: the report it was made from.
        box: its box (RAS voxel indices of the CT).
        region: RAS slices of the pasted region.
        hu: float32 HU of the region after the paste.
        mask: uint8 lesion mask of the region.
        changed: bool, where the paste weight is above 0 (everything else is the input, bit for bit).
        model_spacing_mm: isotropic spacing of the model grid.
        timings: seconds per stage (``crop``, ``mask``, ``inpaint``, ``paste``).
    """

    report: report_bbox.Report
    box: report_bbox.BBox
    region: tuple[slice, slice, slice]
    hu: np.ndarray
    mask: np.ndarray
    changed: np.ndarray
    model_spacing_mm: float
    timings: dict[str, float] = field(default_factory=dict)


def synthesize_lesion(
    system: LesionSystem,
    inp: CTInput,
    report: report_bbox.Report,
    box: report_bbox.BBox,
    *,
    generator: torch.Generator,
    steps: int | None = None,
    guidance: float | None = None,
    text: bool = True,
) -> LesionResult:
    """Make one lesion of ``report`` in ``box`` (see the module docstring); nothing is written.

    Args:
        system: the networks (any :class:`LesionSystem`).
        inp: the CT and organ map.
        report: a validated report.
        box: its box in RAS voxel indices (:func:`place_lesion`).
        generator: torch generator of all model noise (CPU generator: CPU draws).
        steps: DDIM steps (default: the preset's).
        guidance: classifier-free guidance scale (default: the preset's).
        text: ``False`` runs both networks with the null context (ablation).

    Returns:
        A :class:`LesionResult`; apply it with :func:`apply_result`.
    """
    import torch
    from lesion_inpaint import blend_weights, paste_back

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    preset = system.preset
    size = int(preset.crop_size)
    spacing = inp.spacing
    extent = box.size_mm(spacing)
    m = float(preset.model_spacing(tuple(extent)))
    grid = ModelGrid.around(box.center, spacing, m, size)
    ct_ras, organs_ras = inp.ras(inp.ct), inp.ras(inp.organs)
    ct_m = grid.sample(ct_ras, order=1, cval=AIR_HU)
    org_m = np.rint(grid.sample(organs_ras, order=0, cval=0.0)).astype(np.int64)
    ids = np.asarray(report_bbox.organ_ids(report.organ))
    target = np.isin(org_m, ids)
    bbox_m = grid.box_mask(box)
    device = torch.device(getattr(system, "device", "cpu"))

    def t5(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)[None, None]

    timings["crop"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mask_t = system.sample_mask(
        organs=t5(org_m, torch.int64),
        target_organ=t5(target, torch.bool),
        bbox=t5(bbox_m, torch.bool),
        report=report,
        generator=generator,
        steps=steps,
        guidance=guidance,
        text=text,
    )
    mask_m = (mask_t.detach().to("cpu")[0, 0].numpy() > 0).astype(np.uint8)
    timings["mask"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hu_t = system.inpaint(
        ct=t5(ct_m, torch.float32),
        mask=t5(mask_m, torch.uint8),
        report=report,
        generator=generator,
        steps=steps,
        guidance=guidance,
        text=text,
    )
    hu_m = hu_t.detach().to("cpu", torch.float32)[0, 0].numpy()
    timings["inpaint"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not mask_m.any():
        raise SynthesisError("the system returned an empty lesion mask")
    idx = np.argwhere(mask_m)
    pad = PASTE_DILATION + PASTE_FEATHER + 2
    region = grid.ct_region(idx.min(0), idx.max(0), ct_ras.shape, pad)
    mask_ct = grid.to_ct(mask_m, region, order=1, mode="constant") >= 0.5
    if not mask_ct.any():  # a lesion smaller than one CT voxel: keep its strongest voxel
        soft = grid.to_ct(mask_m, region, order=1, mode="constant")
        mask_ct[np.unravel_index(int(np.argmax(soft)), soft.shape)] = True
    hu_ct = grid.to_ct(hu_m, region, order=1, mode="nearest")
    original = np.asarray(ct_ras[region], dtype=np.float32)
    pasted = paste_back(
        original,
        hu_ct,
        mask_ct.astype(np.uint8),
        offset=(0, 0, 0),
        dilation=PASTE_DILATION,
        feather=PASTE_FEATHER,
    )
    changed = blend_weights(mask_ct, dilation=PASTE_DILATION, feather=PASTE_FEATHER) > 0
    timings["paste"] = time.perf_counter() - t0
    return LesionResult(
        report=report,
        box=box,
        region=region,
        hu=pasted,
        mask=mask_ct.astype(np.uint8),
        changed=changed,
        model_spacing_mm=m,
        timings=timings,
    )


def _out_dtype(ct: np.ndarray) -> np.dtype:
    """int16 when every input voxel is an integer in range (HU as usual), else float32 (kept exactly)."""
    if ct.dtype.kind in "iu":
        if ct.size == 0 or (int(ct.min()) >= -32768 and int(ct.max()) <= 32767):
            return np.dtype(np.int16)
        return np.dtype(np.float32)
    if (
        np.all(np.isfinite(ct))
        and np.all(ct == np.round(ct))
        and ct.min() >= -32768
        and ct.max() <= 32767
    ):
        return np.dtype(np.int16)
    return np.dtype(np.float32)


def apply_result(inp: CTInput, result: LesionResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The output volumes in the input's voxel order: ``(ct, lesion, organs)``.

    The CT is int16 (float32 if the input holds non-integer HU); the organ map labels lesion voxels
    outside the report's organ with the organ's most common id near the lesion (as the rule-based
    set does), so map and mask agree.
    """
    dtype = _out_dtype(inp.ct)
    ct = inp.ct.astype(dtype, copy=True)
    lesion = np.zeros(inp.ct.shape, dtype=np.uint8)
    organs = inp.organs.copy()
    ct_r, les_r, org_r = inp.ras(ct), inp.ras(lesion), inp.ras(organs)
    region = result.region
    sub = ct_r[region]
    if dtype.kind == "i":
        new = np.clip(np.rint(result.hu), -32768, 32767).astype(dtype)
    else:
        new = result.hu.astype(dtype)
    sub[result.changed] = new[result.changed]
    ct_r[region] = sub
    les_r[region] = result.mask
    ids = np.asarray(report_bbox.organ_ids(result.report.organ))
    o = org_r[region]
    m = result.mask > 0
    inside = np.isin(o, ids)
    outside = m & ~inside
    if outside.any():
        near = ndimage.binary_dilation(m, iterations=2) & inside
        vals = o[near]
        main = int(np.bincount(vals.astype(np.int64)).argmax()) if vals.size else int(ids[0])
        o[outside] = main
        org_r[region] = o
    return ct, lesion, organs


# ------------------------------------------------------------------------------- writing


def _save_like(path: Path, array: np.ndarray, affine: np.ndarray, header: Any) -> None:
    """Write ``array`` (its dtype) with the input's affine and header fields (``data.save_nifti``)."""
    import nibabel as nib

    from ..data import save_nifti

    hdr = (
        header
        if isinstance(header, nib.Nifti1Header) and not isinstance(header, nib.Nifti2Header)
        else None
    )
    save_nifti(path, array, affine, dtype=array.dtype, header=hdr)


#: File a ``bench run lesiondiffusion`` folder writes to say which system it holds.
RUN_INFO = "bench_run.json"


def system_identity(
    run_dir: str | os.PathLike[str] | None, preset_name: str, text_encoder_id: str
) -> dict[str, Any]:
    """Sidecar identity of a system: run folder (``None``: the shipped one), weights, preset, text encoder."""
    weights = "shipped demo"
    if run_dir is not None:
        weights = "trained run"
        info = Path(run_dir) / RUN_INFO
        if info.is_file():
            try:
                weights = str(json.loads(info.read_text()).get("weights", weights))
            except json.JSONDecodeError:
                pass
    return {
        "run": str(run_dir) if run_dir is not None else None,
        "weights": weights,
        "preset": preset_name,
        "text_encoder": text_encoder_id,
    }


def system_info(system: LesionSystem) -> dict[str, Any]:
    """:func:`system_identity` of a loaded system."""
    preset = system.preset
    return system_identity(
        getattr(system, "run_dir", None),
        str(getattr(preset, "name", type(preset).__name__)),
        system.text_encoder_id,
    )


def _location_class(report: report_bbox.Report) -> str:
    return {
        "within the parenchymal organ": "within",
        "protruding from the parenchymal organ": "protruding",
        "within the lumen of a hollow organ": "lumen",
        "wall thickening": "wall",
    }[report.lesion_location]


def realised_measurements(
    inp: CTInput,
    ct_out: np.ndarray,
    lesion: np.ndarray,
    organs: np.ndarray,
    report: report_bbox.Report,
) -> dict[str, Any]:
    """Measure the written lesion with the rule-based set's measurements (``bench data lesions --stats``)."""
    from .reports import measure_lesion

    vals = measure_lesion(
        inp.ras(ct_out),
        inp.ras(lesion),
        inp.ras(organs),
        inp.spacing,
        organ=report.organ,
        location=_location_class(report),
    )
    return vals


def write_case(
    root: Path, case: str, inp: CTInput, result: LesionResult, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Write one case atomically, the report sidecar last (it marks the case finished)."""
    ct, lesion, organs = apply_result(inp, result)
    _save_like(root / "imagesTr" / f"{case}_0000.nii.gz", ct, inp.affine, inp.header)
    _save_like(
        root / "labelsTr" / f"{case}.nii.gz", lesion, inp.affine, inp.organs_header or inp.header
    )
    org_dtype = np.uint8 if int(organs.max()) < 256 else np.int16
    _save_like(
        root / "organs" / f"{case}.nii.gz",
        organs.astype(org_dtype),
        inp.affine,
        inp.organs_header or inp.header,
    )
    measured = realised_measurements(inp, ct, lesion, organs, result.report)
    sidecar = {
        "case": case,
        "lesion_type": result.report.lesion_type,
        "template": inp.name,
        "text": result.report.text(),
        "report": result.report.to_dict(),
        "box": {**result.box.to_dict(), "axes": "RAS voxel indices"},
        "measured": measured,
        "model_spacing_mm": result.model_spacing_mm,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        **meta,
    }
    atomic_json(root / "reports" / f"{case}.json", sidecar)
    return sidecar


def write_dataset_json(root: Path) -> dict[str, Any]:
    """(Re)write ``dataset.json`` from the finished cases (nnU-Net raw description)."""
    from collections import Counter

    reports = sorted((root / "reports").glob("*.json"))
    counts = Counter(str(json.loads(p.read_text()).get("lesion_type")) for p in reports)
    desc = {
        "name": "ctsynth LesionDiffusion lesions",
        "description": "Lesions synthesized by LesionDiffusion into real CT (ctsynth-bench).",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(reports),
        "file_ending": ".nii.gz",
        "lesion_types": dict(sorted(counts.items())),
        "extra_folders": {
            "organs": "TotalSegmentator v2 organ map",
            "reports": "structured report JSON",
        },
    }
    atomic_json(root / "dataset.json", desc)
    return desc


# ------------------------------------------------------------------------------- batches


@dataclass
class SynthSummary:
    """What :func:`synthesize_cases` did on this rank."""

    root: Path
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def case_seeds(seed: int, index: int) -> tuple[np.random.Generator, int]:
    """Case ``index``'s numpy generator (report, box) and torch seed (model noise), from ``seed`` alone."""
    torch_seed = int(
        np.random.SeedSequence([int(seed), int(index), 1]).generate_state(1, dtype=np.uint64)[0]
        >> 1
    )
    return np.random.default_rng([int(seed), int(index)]), torch_seed


def rank_and_world() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` from the environment torchrun sets, ``(0, 1)`` otherwise."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise SynthesisError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise SynthesisError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank} WORLD_SIZE={world}")
    return rank, world


def check_options(*, n: int, seed: int, steps: int | None, guidance: float | None) -> None:
    """Validate the batch options (before anything is loaded or written)."""
    if not isinstance(n, int) or n < 1:
        raise SynthesisError(f"--n must be a positive integer, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise SynthesisError(f"--seed must be a non-negative integer, got {seed!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1 or steps > 1000):
        raise SynthesisError(f"--steps must be an integer in 1..1000, got {steps!r}")
    if guidance is not None and (not math.isfinite(guidance) or guidance < 0):
        raise SynthesisError(f"--guidance must be a finite number >= 0, got {guidance!r}")


def batch_settings(
    identity: Mapping[str, Any],
    inp: CTInput,
    source: ReportSource,
    *,
    seed: int,
    steps: int | None,
    guidance: float | None,
    prefix: str,
) -> dict[str, Any]:
    """What a batch folder records in ``synth.json`` (a resumed batch must match it)."""
    return {
        "format": FORMAT_VERSION,
        "system": dict(identity),
        "ct": inp.name,
        "ct_fingerprint": inp.fingerprint(),
        "source": source.describe(),
        "seed": int(seed),
        "steps": steps,
        "guidance": guidance,
        "prefix": prefix,
    }


def prepare_output(root: Path, settings: Mapping[str, Any]) -> None:
    """Check or create ``root/synth.json`` (a resumed batch must use the same settings)."""
    manifest = root / "synth.json"
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            raise SynthesisError(f"{manifest} is not valid JSON; use another --out") from None
        if old != json.loads(json.dumps(dict(settings))):
            diff = sorted(
                k
                for k in set(old) | set(settings)
                if old.get(k) != json.loads(json.dumps(settings.get(k)))
            )
            raise SynthesisError(
                f"{root} holds cases made with other settings (differs in: {', '.join(diff)}); "
                "use the same options to resume, or another --out"
            )
    elif root.exists() and not root.is_dir():
        raise SynthesisError(f"{root} exists and is not a folder")
    elif root.exists() and any(root.iterdir()):
        raise SynthesisError(
            f"{root} is not empty and holds no synth.json; use an empty or new --out"
        )


def synthesize_cases(
    system: LesionSystem,
    inp: CTInput,
    source: ReportSource,
    *,
    out: str | os.PathLike[str],
    n: int = 1,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    prefix: str = "ld_",
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
) -> SynthSummary:
    """Write ``n`` lesion cases into ``out`` (resumable; this rank's share under torchrun).

    Case ``i`` (``<prefix><i:05d>``) is made on rank ``i % world`` from ``case_seeds(seed, i)``
    alone, so a killed batch run again skips finished cases (their sidecar exists) and produces the
    files an uninterrupted run would have. Every file is written to a temporary name and renamed.

    Raises:
        SynthesisError: bad options, the report's organ absent from the map, a report that cannot
            fit (checked on case 0 before anything is written), or ``out`` made with other settings.
    """
    import torch
    from tqdm.auto import tqdm

    check_options(n=n, seed=seed, steps=steps, guidance=guidance)
    organ = source.organ_name()
    if organ is not None:
        check_organ_present(inp, organ)
    if source.writer is None:  # the report fits (an LLM is not asked twice); nothing is written yet
        place_lesion(source, inp, case_seeds(seed, 0)[0])
    root = Path(out)
    settings = batch_settings(
        system_info(system), inp, source, seed=seed, steps=steps, guidance=guidance, prefix=prefix
    )
    prepare_output(root, settings)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "synth.json").exists():  # every rank writes the same bytes atomically
        atomic_json(root / "synth.json", settings)
    for sub in ("imagesTr", "labelsTr", "organs", "reports"):  # temporary files of a killed run
        folder = root / sub
        for stale in folder.glob(".*") if folder.is_dir() else ():
            if stale.is_file():
                stale.unlink(missing_ok=True)
    summary = SynthSummary(root=root)
    mine = [i for i in range(n) if i % world == rank]
    for i in tqdm(mine, desc="lesions", disable=not progress):
        case = f"{prefix}{i:05d}"
        if (root / "reports" / f"{case}.json").exists():
            summary.kept.append(case)
            continue
        rng, torch_seed = case_seeds(seed, i)
        t0 = time.perf_counter()
        try:
            report, box = place_lesion(source, inp, rng)
        except SynthesisError as exc:
            log.warning("case %s skipped: %s", case, exc)
            summary.failed[case] = str(exc)
            continue
        gen = torch.Generator(device="cpu").manual_seed(torch_seed)
        place_s = time.perf_counter() - t0
        result = synthesize_lesion(
            system, inp, report, box, generator=gen, steps=steps, guidance=guidance
        )
        result.timings = {"place": place_s, **result.timings}
        meta = {
            "system": system_info(system),
            "seeds": {
                "seed": int(seed),
                "case_index": i,
                "numpy": [int(seed), i],
                "torch": torch_seed,
            },
            "steps": steps if steps is not None else int(system.preset.steps),
            "guidance": guidance if guidance is not None else float(system.preset.guidance),
        }
        write_case(root, case, inp, result, meta)
        summary.written.append(case)
        for k, v in result.timings.items():
            summary.timings[k] = summary.timings.get(k, 0.0) + v
    write_dataset_json(root)
    return summary
