"""Independent verification and benchmark of report sampling + bbox placement on an organ map.

:func:`bbox_violation` checks a box against its report's location rule with full-volume distance
transforms (independent of the sampler's cached crops). :func:`benchmark_bboxes` samples
``n_boxes`` reports with their boxes for every organ of the lesion-type table present in the map
(or every lesion type), verifies every placed box and times it, returning rows; it prints
nothing. The command-line table lives in ``benchmarks/abdomen.py``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from ._bbox import (
    DEFAULT_BBOX_RULES,
    BBox,
    BBoxRules,
    clear_bbox_cache,
    ellipsoid,
    sample_bbox,
    sample_report_and_bbox,
)
from ._lesion_types import LESION_TYPES
from ._organs import ORGANS, organ_ids
from ._report import Report
from ._sampling import sample_report
from .exceptions import BBoxError

__all__ = ["BenchRow", "bbox_violation", "benchmark_bboxes"]


def bbox_violation(
    report: Report,
    organ_labels: np.ndarray,
    spacing: Sequence[float],
    box: BBox,
    *,
    rules: BBoxRules = DEFAULT_BBOX_RULES,
    _cache: dict | None = None,
) -> str | None:
    """Check a box against the report's location rule on the full volume; None if it holds.

    Uses whole-volume Euclidean distance transforms (not the sampler's cropped, cached ones).
    """
    key = (report.organ, id(organ_labels))
    if _cache is not None and key in _cache:
        organ, d_in, d_out = _cache[key]
    else:
        organ = np.isin(organ_labels, organ_ids(report.organ))
        d_in = ndimage.distance_transform_edt(np.pad(organ, 1, mode="edge"), sampling=spacing)[
            1:-1, 1:-1, 1:-1
        ]
        d_out = ndimage.distance_transform_edt(~organ, sampling=spacing)
        if _cache is not None:
            _cache[key] = (organ, d_in, d_out)
    shape = organ_labels.shape
    if any(v < 0 for v in box.lo) or any(h > n for h, n in zip(box.hi, shape, strict=True)):
        return f"box {box} leaves the image {shape}"
    ell = ellipsoid(box.size)
    organ_b, d_in_b, d_out_b = organ[box.slices], d_in[box.slices], d_out[box.slices]
    c = box.center_voxel
    local = tuple(ci - li for ci, li in zip(c, box.lo, strict=True))
    loc = report.lesion_location
    if loc == "within the parenchymal organ":
        bad = ell & ~organ_b & (d_out_b > rules.within_margin_mm + 1e-9)
        return f"{int(bad.sum())} lesion voxels outside the organ margin" if bad.any() else None
    if not organ_b[local]:
        return f"centre {c} is not in the organ"
    if loc == "protruding from the parenchymal organ":
        return None if (ell & ~organ_b).any() else "lesion does not cross the organ surface"
    depth = d_in_b[local]
    if loc == "within the lumen of a hollow organ":
        ok = depth >= rules.lumen_depth_mm - 1e-9
        return None if ok else f"centre only {depth:.1f} mm deep"
    ok = depth <= max(rules.wall_thickness_mm, max(spacing)) + 1e-9
    return None if ok else f"centre {depth:.1f} mm deep, not on the wall"


@dataclass(frozen=True)
class BenchRow:
    """Result for one organ or lesion type: samples, boxes placed, failures, invalid boxes, time."""

    lesion_type: str
    organ: str
    attempts: int
    placed: int
    failures: dict[str, int]
    invalid: int
    first_call_s: float
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        """Samples per wall-clock second (after the first, cache-filling call)."""
        return (self.attempts - 1) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cpu_rate(self) -> float:
        """Samples per CPU second of this process (robust to other load on the machine)."""
        return (self.attempts - 1) / self.cpu_seconds if self.cpu_seconds > 0 else float("inf")


def benchmark_bboxes(
    organ_labels: np.ndarray,
    spacing: Sequence[float],
    *,
    n_boxes: int = 1000,
    by: Literal["organ", "lesion_type"] = "organ",
    seed: int = 0,
    verify: bool = True,
) -> list[BenchRow]:
    """Time report + bbox sampling on an organ map, per organ or per lesion type.

    ``by="organ"``: for every organ of the lesion-type table present in the map, ``n_boxes``
    calls of :func:`~report_bbox.sample_report_and_bbox` (a report is redrawn when its box does not
    fit this organ). ``by="lesion_type"``: for every lesion type whose organ is present,
    ``n_boxes`` reports drawn up front and one :func:`~report_bbox.sample_bbox` call each (no
    redraw), so the failures show which reports do not fit this patient.

    Args:
        organ_labels: ``(X, Y, Z)`` TotalSegmentator v2 ids.
        spacing: Voxel spacing in mm.
        n_boxes: Samples per row.
        by: Row grouping, see above.
        seed: Seed of the numpy generator.
        verify: Check every placed box with :func:`bbox_violation` (not timed).

    Returns:
        One :class:`BenchRow` per organ or lesion type present.
    """
    if n_boxes < 1:
        raise ValueError(f"n_boxes must be >= 1, got {n_boxes}")
    if by not in ("organ", "lesion_type"):
        raise ValueError(f"by must be 'organ' or 'lesion_type', got {by!r}")
    present = set(np.unique(organ_labels).tolist())
    rng = np.random.default_rng(seed)
    check_cache: dict = {}
    clear_bbox_cache()
    if by == "organ":
        names = sorted({s.organ for s in LESION_TYPES.values()})
        jobs = [(o, o) for o in names if present.intersection(ORGANS[o].ids)]
    else:
        jobs = [
            (n, s.organ)
            for n, s in LESION_TYPES.items()
            if present.intersection(ORGANS[s.organ].ids)
        ]
    rows = []
    for name, organ in jobs:
        reports = (
            [] if by == "organ" else [sample_report(rng, lesion_type=name) for _ in range(n_boxes)]
        )
        boxes: list[tuple[Report, BBox]] = []
        failures: Counter[str] = Counter()
        first = 0.0
        t0 = time.perf_counter()
        c0 = time.process_time()
        for i in range(n_boxes):
            try:
                if by == "organ":
                    boxes.append(sample_report_and_bbox(rng, organ_labels, spacing, organ=organ))
                else:
                    boxes.append((reports[i], sample_bbox(reports[i], organ_labels, spacing, rng)))
            except BBoxError as exc:
                reason = str(exc).split(": ", 1)[-1].split(";")[0][:90]
                failures[reason] += 1
            if i == 0:
                first = time.perf_counter() - t0
                t0 = time.perf_counter()
                c0 = time.process_time()
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        invalid = 0
        if verify:
            invalid = sum(
                bbox_violation(r, organ_labels, spacing, b, _cache=check_cache) is not None
                for r, b in boxes
            )
        rows.append(
            BenchRow(name, organ, n_boxes, len(boxes), dict(failures), invalid, first, seconds, cpu)
        )
    return rows
