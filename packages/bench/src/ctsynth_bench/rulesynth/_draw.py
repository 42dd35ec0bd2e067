"""Drawing a report per lesion type, and placing it, with report-bbox.

Reports and boxes come from ``report_bbox.sample_report_and_bbox`` (a report that does not fit
this patient's organ is redrawn) and the target point is the box centre. The synthesizer acts on
the typed :class:`report_bbox.Report` through ``spec_from_report``.
"""

from __future__ import annotations

import numpy as np
import report_bbox

from ._rules import SynthError, organ_of


def draw_report_and_target(
    rng: np.random.Generator,
    lesion_type: str,
    organs: np.ndarray,
    spacing: tuple[float, float, float],
) -> tuple[report_bbox.Report, np.ndarray]:
    """Draw a report for ``lesion_type`` and the lesion centre (voxels) in this label map.

    Args:
        rng: numpy generator (the only source of randomness).
        lesion_type: one of ``report_bbox.LESION_TYPES``.
        organs: TotalSegmentator v2 label map, shape (X, Y, Z).
        spacing: voxel spacing in mm, (x, y, z).

    Returns:
        The validated report, and the box centre as float64 (3,).

    Raises:
        SynthError: unknown lesion type, or report-bbox could not place any report of this type.
    """
    organ_of(lesion_type)  # validates the name (with a did-you-mean)
    try:
        report, box = report_bbox.sample_report_and_bbox(
            rng, organs, spacing, lesion_type=lesion_type
        )
    except ValueError as exc:  # BBoxError / ReportError
        raise SynthError(f"report-bbox could not place {lesion_type}: {exc}") from exc
    return report, np.asarray(box.center, dtype=np.float64)
