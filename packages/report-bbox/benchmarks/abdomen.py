"""Bbox benchmark on the TotalSegmentator example organ map (61 v2 labels, 3 mm).

Get the map from the totalsegmentator sdist (no network access at run time):

    pip download --no-deps --no-binary :all: totalsegmentator==2.18.0
    tar xzf totalsegmentator-2.18.0.tar.gz
    uv run --with nibabel --package report-bbox python packages/report-bbox/benchmarks/abdomen.py \
        totalsegmentator-2.18.0/tests/reference_files/example_seg_fast_force_split.nii.gz

Or pass any organ map: a NIfTI (needs nibabel) or ``.npy`` with ``--spacing``.
"""

import sys

from report_bbox.bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
