"""Structured lesion reports, organ vocabulary, report-to-bbox rules and an LLM hook.

Public API:

* :class:`Report` - the 11-attribute LesionDiffusion report (closed vocabulary, sizes in mm).
* :func:`sample_report` and :data:`LESION_TYPES` - medically consistent random reports.
* :func:`sample_bbox` and :class:`BBox` - a lesion box in an organ label map by location rule.
* :data:`ORGANS`, :func:`organ_ids`, :func:`resolve_organ`, :func:`is_hollow`, :func:`v1_to_v2` -
  the TotalSegmentator v2 organ table.
* :class:`ReportWriter`, :class:`OpenAIChatReportWriter`, :class:`FakeReportWriter` - report
  writers (LLM hook).
* :func:`bbox_violation`, :func:`benchmark_bboxes`, :class:`BenchRow` - independent verification
  and timing of placed boxes (the printed table is ``benchmarks/abdomen.py``).

Import everything from ``report_bbox``; the submodules are implementation detail.
"""

from importlib.metadata import PackageNotFoundError, version

from ._bbox import (
    DEFAULT_BBOX_RULES,
    BBox,
    BBoxRules,
    clear_bbox_cache,
    sample_bbox,
    sample_report_and_bbox,
)
from ._lesion_types import (
    LESION_TYPES,
    RULES,
    LesionTypeSpec,
    Rule,
    lesion_type_name,
    rule_violations,
)
from ._llm import FakeReportWriter, OpenAIChatReportWriter, ReportRequest, ReportWriter
from ._organs import (
    ORGAN_GROUPS,
    ORGANS,
    TOTALSEG_V1,
    TOTALSEG_V2,
    V1_TO_V2,
    Organ,
    is_hollow,
    organ_ids,
    organ_kind,
    resolve_organ,
    v1_to_v2,
)
from ._report import LESION_ORGANS, Report, parse_size_mm
from ._sampling import check_report_fits, sample_report
from ._verify import BenchRow, bbox_violation, benchmark_bboxes
from ._vocabulary import (
    ATTRIBUTES,
    CATEGORICAL_ATTRIBUTES,
    IMAGE_ATTRIBUTES,
    MASK_ATTRIBUTES,
    VOCABULARY,
    canonical_value,
)
from .exceptions import BBoxError, OrganError, ReportError, ReportWriterError

try:
    __version__ = version("report-bbox")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "ATTRIBUTES",
    "CATEGORICAL_ATTRIBUTES",
    "DEFAULT_BBOX_RULES",
    "IMAGE_ATTRIBUTES",
    "LESION_ORGANS",
    "LESION_TYPES",
    "MASK_ATTRIBUTES",
    "ORGANS",
    "ORGAN_GROUPS",
    "RULES",
    "TOTALSEG_V1",
    "TOTALSEG_V2",
    "V1_TO_V2",
    "VOCABULARY",
    "BBox",
    "BBoxError",
    "BBoxRules",
    "BenchRow",
    "FakeReportWriter",
    "LesionTypeSpec",
    "OpenAIChatReportWriter",
    "Organ",
    "OrganError",
    "Report",
    "ReportError",
    "ReportRequest",
    "ReportWriter",
    "ReportWriterError",
    "Rule",
    "__version__",
    "bbox_violation",
    "benchmark_bboxes",
    "canonical_value",
    "check_report_fits",
    "clear_bbox_cache",
    "is_hollow",
    "lesion_type_name",
    "organ_ids",
    "organ_kind",
    "parse_size_mm",
    "resolve_organ",
    "rule_violations",
    "sample_bbox",
    "sample_report",
    "sample_report_and_bbox",
    "v1_to_v2",
]
