"""Place a lesion bounding box in an organ label map according to a report's location rule.

Rules (LesionDiffusion's ``generate_random_bbox_from_mask``, made exact and spacing-aware). The
lesion is the ellipsoid inscribed in the box (:meth:`BBox.ellipsoid_mask`); ``d_in`` is the
Euclidean distance in mm (``scipy.ndimage.distance_transform_edt`` with the voxel spacing) from
an organ voxel to the nearest non-organ voxel.

* ``within the parenchymal organ``: every voxel of the inscribed ellipsoid is an organ voxel or
  lies within ``within_margin_mm`` of the organ. (A whole-box rule would reject a round lesion in a
  round organ because of the box corners.)
* ``protruding from the parenchymal organ``: the centre voxel is in the organ and the ellipsoid
  holds at least one non-organ voxel (it crosses the surface).
* ``within the lumen of a hollow organ``: the centre voxel is in the organ eroded by
  ``lumen_depth_mm`` (``d_in >= lumen_depth_mm``); centres deep enough to hold the whole lesion
  are tried first.
* ``wall thickening``: the centre voxel is on the wall shell, ``d_in <= max(wall_thickness_mm,
  largest spacing)`` (so the outer voxel layer always counts).

Every box lies inside the image and does not overlap ``existing`` boxes. Size: the report's mm
size times a per-axis jitter ``U(1 - jitter, 1 + jitter)``, converted to voxels with the spacing
(at least one voxel). If no placement is found in ``max_tries`` draws, the size is shrunk in
``shrink_steps`` steps down to ``1 - shrink_tolerance`` of it; then :class:`BBoxError` says why.

Per label map and organ, the distance transform and the organ voxels sorted by depth are computed
once and cached, so each further box costs a binary search and a few array operations.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from ._organs import ORGANS, organ_ids
from ._report import Report
from .exceptions import BBoxError

__all__ = [
    "DEFAULT_BBOX_RULES",
    "BBox",
    "BBoxRules",
    "clear_bbox_cache",
    "sample_bbox",
    "sample_report_and_bbox",
]


@dataclass(frozen=True)
class BBox:
    """Axis-aligned box in voxel indices of the label map.

    Attributes:
        lo: Inclusive minimum corner ``(x, y, z)``.
        hi: Exclusive maximum corner ``(x, y, z)``.
    """

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    def __post_init__(self) -> None:
        try:
            lo = tuple(int(v) for v in self.lo)
            hi = tuple(int(v) for v in self.hi)
        except (TypeError, ValueError):
            raise BBoxError(
                f"BBox corners must be integers, got lo={self.lo} hi={self.hi}"
            ) from None
        if len(lo) != 3 or len(hi) != 3 or any(h <= a0 for a0, h in zip(lo, hi, strict=True)):
            raise BBoxError(f"BBox needs 3-d corners with hi > lo, got lo={self.lo} hi={self.hi}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @property
    def size(self) -> tuple[int, int, int]:
        """Extent in voxels ``hi - lo``."""
        return tuple(h - a0 for a0, h in zip(self.lo, self.hi, strict=True))  # type: ignore[return-value]

    @property
    def center(self) -> tuple[float, float, float]:
        """Geometric centre in voxel coordinates, ``(lo + hi - 1) / 2``."""
        return tuple((a0 + h - 1) / 2 for a0, h in zip(self.lo, self.hi, strict=True))  # type: ignore[return-value]

    @property
    def center_voxel(self) -> tuple[int, int, int]:
        """The voxel the sampler drew as centre, ``lo + size // 2``."""
        return tuple(a0 + s // 2 for a0, s in zip(self.lo, self.size, strict=True))  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index the box region of an array: ``array[box.slices]``."""
        return tuple(slice(a0, h) for a0, h in zip(self.lo, self.hi, strict=True))  # type: ignore[return-value]

    def size_mm(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        """Extent in mm for a voxel spacing."""
        return tuple(float(n * s) for n, s in zip(self.size, spacing, strict=True))  # type: ignore[return-value]

    def overlaps(self, other: BBox) -> bool:
        """Whether the two half-open boxes share a voxel."""
        return all(
            a < d and c < b for a, b, c, d in zip(self.lo, self.hi, other.lo, other.hi, strict=True)
        )

    def to_mask(self, shape: Sequence[int]) -> np.ndarray:
        """Boolean array of ``shape`` that is True inside the box (clipped to the array)."""
        mask = np.zeros(tuple(shape), dtype=bool)
        mask[self.slices] = True
        return mask

    def ellipsoid_mask(self, shape: Sequence[int]) -> np.ndarray:
        """Boolean array of ``shape``, True on the ellipsoid inscribed in the box (the lesion)."""
        mask = np.zeros(tuple(shape), dtype=bool)
        ell = ellipsoid(self.size)
        region = mask[self.slices]
        region[...] = ell[tuple(slice(0, n) for n in region.shape)]
        return mask

    def to_dict(self) -> dict[str, list[int]]:
        """``{"lo": [...], "hi": [...]}`` for JSON."""
        return {"lo": list(self.lo), "hi": list(self.hi)}


@dataclass(frozen=True)
class BBoxRules:
    """The stated parameters of the placement rules (see the module docstring).

    Attributes:
        jitter: Relative per-axis size jitter; each axis is multiplied by ``U(1-j, 1+j)``.
        within_margin_mm: How far (mm) lesion voxels may lie outside the organ for "within".
        lumen_depth_mm: Erosion depth (mm) of the organ for lumen centres.
        wall_thickness_mm: Shell thickness (mm) for wall-thickening centres.
        max_tries: Random placements tried per size before shrinking.
        shrink_tolerance: The box may shrink to ``1 - shrink_tolerance`` of the jittered size.
        shrink_steps: Number of shrink steps between full size and the tolerance.
    """

    jitter: float = 0.1
    within_margin_mm: float = 2.0
    lumen_depth_mm: float = 5.0
    wall_thickness_mm: float = 5.0
    max_tries: int = 100
    shrink_tolerance: float = 0.3
    shrink_steps: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.jitter < 1:
            raise BBoxError(f"jitter must be in [0, 1), got {self.jitter}")
        if not 0 <= self.shrink_tolerance < 1:
            raise BBoxError(f"shrink_tolerance must be in [0, 1), got {self.shrink_tolerance}")
        for name in ("within_margin_mm", "lumen_depth_mm", "wall_thickness_mm"):
            if not getattr(self, name) >= 0:
                raise BBoxError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_tries < 1 or self.shrink_steps < 0:
            raise BBoxError("max_tries must be >= 1 and shrink_steps >= 0")


DEFAULT_BBOX_RULES = BBoxRules()


@lru_cache(maxsize=4096)
def ellipsoid(size: tuple[int, int, int]) -> np.ndarray:
    """Boolean ellipsoid inscribed in a box of ``size`` voxels (shared with the verifier)."""
    grids = np.ogrid[tuple(slice(0, n) for n in size)]
    total = 0.0
    for g, n in zip(grids, size, strict=True):
        total = total + ((g - (n - 1) / 2) / (n / 2)) ** 2
    ell = np.asarray(total <= 1.0)
    ell.setflags(write=False)
    return ell


class _OrganGeometry:
    """Distance transform and depth-sorted voxels of one organ (a union of ids) in a label map."""

    def __init__(
        self,
        labels: np.ndarray,
        ids: tuple[int, ...],
        spacing: tuple[float, float, float],
        pad_mm: float,
    ) -> None:
        self.shape = labels.shape
        self.spacing = spacing
        mask = np.isin(labels, ids)
        self.count = int(mask.sum())
        if self.count == 0:
            return
        nz = (
            np.nonzero(mask.any(axis=(1, 2)))[0],
            np.nonzero(mask.any(axis=(0, 2)))[0],
            np.nonzero(mask.any(axis=(0, 1)))[0],
        )
        pad = [math.ceil(pad_mm / s) + 1 for s in spacing]
        self.origin = np.array([max(0, int(a[0]) - p) for a, p in zip(nz, pad, strict=True)])
        end = [min(n, int(a[-1]) + 1 + p) for a, p, n in zip(nz, pad, self.shape, strict=True)]
        self.crop = tuple(slice(int(o), e) for o, e in zip(self.origin, end, strict=True))
        organ = mask[self.crop]
        self.organ = organ
        # Outside the image the organ is assumed to continue ("edge" padding), so the image border
        # is never mistaken for an organ surface.
        padded = np.pad(organ, 1, mode="edge")
        if padded.all():  # no surface anywhere: the organ fills the image
            d_in = np.full(organ.shape, np.inf)
        else:
            d_in = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
        self.d_out = ndimage.distance_transform_edt(~organ, sampling=spacing)
        idx = np.nonzero(organ)
        depth = d_in[idx]
        order = np.argsort(depth, kind="stable")
        self.depth = depth[order]
        self.voxels = np.stack(idx, axis=1)[order].astype(np.int64) + self.origin
        self.max_depth = float(self.depth[-1])

    def allowed_within(self, margin_mm: float) -> np.ndarray:
        """Crop voxels a "within" lesion may cover: organ, or within ``margin_mm`` of it."""
        cached = getattr(self, "_allowed", None)
        if cached is None or cached[0] != margin_mm:
            self._allowed = (margin_mm, self.organ | (self.d_out <= margin_mm + 1e-9))
        return self._allowed[1]

    def at_least(self, d: float) -> tuple[int, int]:
        return int(np.searchsorted(self.depth, d, side="left")), len(self.depth)

    def below(self, d: float) -> tuple[int, int]:
        return 0, int(np.searchsorted(self.depth, d, side="right"))

    def ellipsoid_check(self, box: BBox, want: str, margin_mm: float) -> bool:
        """Exact rule check of the inscribed ellipsoid against the organ (crop coordinates)."""
        ell = ellipsoid(box.size)
        lo = np.array(box.lo) - self.origin
        hi = np.array(box.hi) - self.origin
        clo = np.maximum(lo, 0)
        chi = np.minimum(hi, self.organ.shape)
        inner = ell[tuple(slice(a - a0, b - a0) for a, b, a0 in zip(clo, chi, lo, strict=True))]
        sl = tuple(slice(a, b) for a, b in zip(clo, chi, strict=True))
        outside_crop = int(ell.sum()) - int(inner.sum())
        if want == "within":
            if outside_crop:
                return False
            out = inner & ~self.organ[sl]
            return not out.any() or bool(np.all(self.d_out[sl][out] <= margin_mm + 1e-9))
        # protruding: the ellipsoid crosses the surface
        return outside_crop > 0 or bool((inner & ~self.organ[sl]).any())


class _LabelMapCache:
    def __init__(self, labels: np.ndarray, spacing: tuple[float, float, float]) -> None:
        self.ref = weakref.ref(labels)
        self.fingerprint = _fingerprint(labels)
        self.geometries: dict[tuple[tuple[int, ...], float], _OrganGeometry] = {}


_CACHE: OrderedDict[tuple, _LabelMapCache] = OrderedDict()
_CACHE_SIZE = 8


def _fingerprint(labels: np.ndarray) -> int:
    # A strided ~32**3 sample: cheap for any memory layout (no copy of the whole map).
    sample = labels[tuple(slice(None, None, max(1, n // 32)) for n in labels.shape)]
    return hash((labels.shape, labels.dtype.str, np.ascontiguousarray(sample).tobytes()))


def clear_bbox_cache() -> None:
    """Drop the cached distance transforms (needed only after modifying a label map in place)."""
    _CACHE.clear()


def _geometry(
    labels: np.ndarray, ids: tuple[int, ...], spacing: tuple[float, float, float], pad_mm: float
) -> _OrganGeometry:
    key = (id(labels), labels.shape, labels.dtype.str, spacing)
    entry = _CACHE.get(key)
    if entry is None or entry.ref() is not labels or entry.fingerprint != _fingerprint(labels):
        entry = _LabelMapCache(labels, spacing)
        _CACHE[key] = entry
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    gkey = (ids, pad_mm)
    if gkey not in entry.geometries:
        entry.geometries[gkey] = _OrganGeometry(labels, ids, spacing, pad_mm)
    return entry.geometries[gkey]


def _check_inputs(
    report: Report, labels: np.ndarray, spacing: Sequence[float], rng: np.random.Generator
) -> tuple[Report, np.ndarray, tuple[float, float, float]]:
    if isinstance(report, dict):
        report = Report.from_dict(report)
    if not isinstance(report, Report):
        raise TypeError(
            f"report must be a report_bbox.Report or a dict, got {type(report).__name__}"
        )
    if not isinstance(labels, np.ndarray) or labels.ndim != 3:
        raise BBoxError(
            f"organ_labels must be a 3-d numpy array of TotalSegmentator v2 ids, got "
            f"{getattr(labels, 'shape', type(labels).__name__)}"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise BBoxError(f"organ_labels must hold integer ids, got dtype {labels.dtype}")
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise BBoxError(f"spacing must be three numbers in mm, got {spacing!r}") from None
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise BBoxError(f"spacing must be three positive numbers in mm, got {spacing!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return report, labels, sp  # type: ignore[return-value]


def _box_at(center: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = center - n // 2
    return lo, lo + n


def _count(reasons: dict[str, int], key: str, k: int) -> None:
    if k:
        reasons[key] = reasons.get(key, 0) + int(k)


@lru_cache(maxsize=4096)
def _probes(size: tuple[int, int, int]) -> np.ndarray:
    """Up to 64 voxels on the rim of the inscribed ellipsoid (offsets in the box), for a cheap
    vectorized necessary test before the exact check."""
    ell = ellipsoid(size)
    rim = np.argwhere(ell & ~ndimage.binary_erosion(ell))
    if len(rim) > 64:
        rim = rim[np.linspace(0, len(rim) - 1, 64).astype(np.int64)]
    return rim


def _first_valid(
    geo: _OrganGeometry,
    picks: np.ndarray,
    n: np.ndarray,
    shape: np.ndarray,
    existing: tuple[BBox, ...],
    check: str | None,
    rules: BBoxRules,
    reasons: dict[str, int],
) -> BBox | None:
    """The first candidate (in draw order) whose box satisfies every rule, checked vectorized."""
    lo = geo.voxels[picks] - n // 2
    hi = lo + n
    ok = np.all(lo >= 0, axis=1) & np.all(hi <= shape, axis=1)
    _count(reasons, "boxes around the allowed centres leave the image", (~ok).sum())
    if existing and ok.any():
        e_lo = np.array([e.lo for e in existing])
        e_hi = np.array([e.hi for e in existing])
        hit = np.all((lo[:, None, :] < e_hi[None]) & (e_lo[None] < hi[:, None, :]), axis=2).any(
            axis=1
        )
        _count(
            reasons,
            f"every try overlapped one of the {len(existing)} existing boxes",
            (ok & hit).sum(),
        )
        ok &= ~hit
    if check == "within" and ok.any():
        # necessary: every rim probe of the ellipsoid is an organ voxel or within the margin
        probes = _probes(tuple(int(v) for v in n))
        pts = lo[ok][:, None, :] + probes[None] - geo.origin
        inside = np.all((pts >= 0) & (pts < np.array(geo.organ.shape)), axis=2)
        pts = np.clip(pts, 0, np.array(geo.organ.shape) - 1)
        good = geo.allowed_within(rules.within_margin_mm)[pts[..., 0], pts[..., 1], pts[..., 2]]
        passed = np.all(good & inside, axis=1)
        _count(reasons, "the lesion ellipsoid did not fit inside the organ", (~passed).sum())
        idx = np.nonzero(ok)[0]
        ok[idx[~passed]] = False
    for k in np.nonzero(ok)[0]:
        box = BBox(tuple(int(v) for v in lo[k]), tuple(int(v) for v in hi[k]))  # type: ignore[arg-type]
        if check is None or geo.ellipsoid_check(box, check, rules.within_margin_mm):
            return box
        key = (
            "the lesion ellipsoid did not fit inside the organ"
            if check == "within"
            else "the lesion ellipsoid did not cross the organ surface"
        )
        _count(reasons, key, 1)
    return None


def sample_bbox(
    report: Report,
    organ_labels: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    *,
    existing: Iterable[BBox] = (),
    rules: BBoxRules = DEFAULT_BBOX_RULES,
) -> BBox:
    """Sample a lesion bounding box that satisfies the report's location rule.

    Args:
        report: The report; its organ, lesion location and size (mm) are used.
        organ_labels: Integer array ``(X, Y, Z)`` of TotalSegmentator v2 ids.
        spacing: Voxel spacing ``(sx, sy, sz)`` in mm, same axis order.
        rng: Source of randomness; the box is a deterministic function of its state.
        existing: Boxes already placed; the new box overlaps none of them.
        rules: Placement parameters (margins, depths, jitter, retry bounds).

    Returns:
        A :class:`BBox` in voxel indices, inside the image.

    Raises:
        BBoxError: The organ is absent, too small or thin for the lesion, has no wall or lumen
            voxels, or no non-overlapping placement was found within the retry bound.
    """
    report, labels, sp = _check_inputs(report, organ_labels, spacing, rng)
    existing = tuple(existing)
    ids = organ_ids(report.organ)
    organ_text = f"{ORGANS[report.organ].text!r} (ids {list(ids)})"
    geo = _geometry(labels, ids, sp, rules.within_margin_mm)
    if geo.count == 0:
        raise BBoxError(f"organ {organ_text} is absent from the label map")
    spacing_arr = np.array(sp)
    shape = np.array(labels.shape)
    location = report.lesion_location
    size_mm = np.array(report.size) * rng.uniform(1 - rules.jitter, 1 + rules.jitter, size=3)
    even_slack = 0.5 * float(np.linalg.norm(spacing_arr))
    wall_mm = max(rules.wall_thickness_mm, float(spacing_arr.max()))
    if location == "within the lumen of a hollow organ" and geo.max_depth < rules.lumen_depth_mm:
        raise BBoxError(
            f"no lumen voxels: organ {organ_text} is nowhere deeper than "
            f"{rules.lumen_depth_mm:g} mm (deepest voxel {geo.max_depth:.1f} mm from the surface)"
        )
    if location == "wall thickening" and geo.below(wall_mm)[1] == 0:
        raise BBoxError(f"no wall voxels: organ {organ_text} has no surface inside the image")
    steps = rules.shrink_steps
    scales = (
        [1.0 - rules.shrink_tolerance * k / steps for k in range(steps + 1)] if steps else [1.0]
    )
    reasons: dict[str, int] = {}
    for scale in scales:
        n = np.maximum(1, np.round(size_mm * scale / spacing_arr)).astype(np.int64)
        if np.any(n > shape):
            reasons["the box is larger than the image"] = 1
            continue
        if location == "protruding from the parenchymal organ" and np.all(n == 1):
            reasons[
                "a single-voxel lesion cannot cross the organ surface (lesion smaller than a voxel)"
            ] = 1
            continue
        half = n * spacing_arr / 2
        r_max, r_min = float(half.max()), float(half.min())
        # (candidate index range, whether the ellipsoid must be checked exactly)
        pools: list[tuple[tuple[int, int], str | None]]
        if location == "within the parenchymal organ":
            pools = [(geo.at_least(r_max + even_slack + 1e-9), None)]
            pools.append(
                (geo.at_least(max(0.0, r_min - rules.within_margin_mm - even_slack)), "within")
            )
            if geo.max_depth + rules.within_margin_mm + even_slack < r_min:
                reasons[
                    f"organ smaller than the lesion: {organ_text} is at most "
                    f"{geo.max_depth:.1f} mm deep but the lesion needs a {r_min:.1f} mm semi-axis"
                ] = 1
                continue
        elif location == "protruding from the parenchymal organ":
            pools = [
                (geo.below(r_min + even_slack), "protruding"),
                ((0, len(geo.depth)), "protruding"),
            ]
        elif location == "within the lumen of a hollow organ":
            deep = max(rules.lumen_depth_mm, r_max + even_slack + 1e-9)
            pools = [(geo.at_least(deep), None), (geo.at_least(rules.lumen_depth_mm), None)]
        else:  # wall thickening
            pools = [(geo.below(wall_mm), None)]
        tries = 0
        for (start, stop), check in pools:
            if stop <= start:
                continue
            budget = rules.max_tries - tries
            if budget <= 0:
                break
            picks = rng.integers(start, stop, size=budget)
            tries += budget
            # small first chunk: the common case succeeds on the first draws
            for a, b in ((0, 4), (4, budget)):
                if a < min(b, budget):
                    box = _first_valid(geo, picks[a:b], n, shape, existing, check, rules, reasons)
                    if box is not None:
                        return box
    why = "; ".join(reasons) or "no candidate centres"
    raise BBoxError(
        f"could not place a {report.size_text()} lesion ({location}) in {organ_text} after "
        f"{len(scales)} sizes x {rules.max_tries} tries, shrinking down to "
        f"{1 - rules.shrink_tolerance:.0%}: {why}"
    )


def sample_report_and_bbox(
    rng: np.random.Generator,
    organ_labels: np.ndarray,
    spacing: Sequence[float],
    *,
    lesion_type: str | None = None,
    organ: str | None = None,
    existing: Iterable[BBox] = (),
    max_reports: int = 20,
    rules: BBoxRules = DEFAULT_BBOX_RULES,
    **fixed: object,
) -> tuple[Report, BBox]:
    """Draw a report and place its box, drawing a new report when the box does not fit.

    A report drawn from the lesion-type table knows nothing of this patient's organ (a 90 mm
    kidney cancer "within" a 40 mm kidney); this redraws the report, up to ``max_reports`` times.

    Args:
        rng: Source of randomness (reports and boxes).
        organ_labels: ``(X, Y, Z)`` TotalSegmentator v2 ids.
        spacing: Voxel spacing in mm.
        lesion_type: Passed to :func:`~report_bbox.sample_report`.
        organ: Passed to :func:`~report_bbox.sample_report`.
        existing: Boxes the new one must not overlap.
        max_reports: Reports to try before giving up.
        rules: Placement parameters.
        **fixed: Fixed report values, passed to :func:`~report_bbox.sample_report`.

    Returns:
        ``(report, box)``.

    Raises:
        ReportError: The request itself is invalid (see :func:`~report_bbox.sample_report`).
        BBoxError: No drawn report could be placed; the message gives the last reason.
    """
    from ._sampling import sample_report

    if max_reports < 1:
        raise BBoxError(f"max_reports must be >= 1, got {max_reports}")
    existing = tuple(existing)
    last: BBoxError | None = None
    for _ in range(max_reports):
        report = sample_report(rng, lesion_type=lesion_type, organ=organ, **fixed)
        try:
            return report, sample_bbox(
                report, organ_labels, spacing, rng, existing=existing, rules=rules
            )
        except BBoxError as exc:
            last = exc
            if "absent from the label map" in str(exc):
                break
    raise BBoxError(f"no placeable report in {max_reports} draws; last: {last}")
