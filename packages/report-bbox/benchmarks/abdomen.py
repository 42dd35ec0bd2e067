"""Bbox benchmark: report sampling + box placement on an organ map, verified and timed.

Prints one row per organ (or per lesion type) from :func:`report_bbox.benchmark_bboxes`, which
checks every placed box with :func:`report_bbox.bbox_violation`. The library prints nothing;
this script owns the table.

Get the TotalSegmentator example organ map (61 v2 labels, 3 mm) from its sdist (no network
access at run time):

    pip download --no-deps --no-binary :all: totalsegmentator==2.18.0
    tar xzf totalsegmentator-2.18.0.tar.gz
    uv run --with nibabel --package report-bbox python packages/report-bbox/benchmarks/abdomen.py \
        totalsegmentator-2.18.0/tests/reference_files/example_seg_fast_force_split.nii.gz

Or pass any organ map: a NIfTI (needs nibabel) or ``.npy`` / ``.npz`` with ``--spacing``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np
import report_bbox


def _load(
    path: str, spacing: Sequence[float] | None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    if path.endswith((".nii", ".nii.gz")):
        try:
            import nibabel as nib
        except ImportError:
            raise SystemExit("reading NIfTI needs nibabel: pip install nibabel") from None
        img = nib.as_closest_canonical(nib.load(path))
        labels = np.asarray(img.dataobj).astype(np.int16)
        sp = tuple(float(z) for z in img.header.get_zooms()[:3])
        return labels, (sp if spacing is None else tuple(spacing))  # type: ignore[return-value]
    labels = np.load(path)
    if isinstance(labels, np.lib.npyio.NpzFile):
        labels = labels[labels.files[0]]
    if spacing is None:
        raise SystemExit("--spacing SX SY SZ is required for .npy/.npz label maps")
    return labels, tuple(float(s) for s in spacing)  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print per-lesion-type rates of report + bbox sampling on an organ map."""
    parser = argparse.ArgumentParser(
        prog="abdomen.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("labels", help="organ label map (.nii/.nii.gz with nibabel, or .npy/.npz)")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, help="voxel spacing in mm")
    parser.add_argument("--n", type=int, default=1000, help="samples per organ / lesion type")
    parser.add_argument("--by", choices=("organ", "lesion_type"), default="organ")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    labels, spacing = _load(args.labels, args.spacing)
    t0 = time.perf_counter()
    rows = report_bbox.benchmark_bboxes(labels, spacing, n_boxes=args.n, by=args.by, seed=args.seed)
    total = time.perf_counter() - t0
    print(f"label map {labels.shape} spacing {spacing} mm; {args.n} samples per {args.by}")
    print(
        f"{args.by:<20}{'organ':<17}{'placed':>8}{'invalid':>8}{'first s':>9}{'per s':>9}{'per cpu s':>11}  failures"
    )
    for r in rows:
        fail = "; ".join(f"{n}x {k}" for k, n in r.failures.items()) or "-"
        print(
            f"{r.lesion_type:<20}{r.organ:<17}{r.placed:>8}{r.invalid:>8}{r.first_call_s:>9.3f}{r.rate:>9.0f}{r.cpu_rate:>11.0f}  {fail}"
        )
    placed = sum(r.placed for r in rows)
    secs = sum(r.seconds + r.first_call_s for r in rows)
    print(
        f"total: {placed} boxes placed, {sum(r.invalid for r in rows)} invalid, "
        f"{placed / secs:.0f} samples/s in sampling, {total:.1f} s wall including verification"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
