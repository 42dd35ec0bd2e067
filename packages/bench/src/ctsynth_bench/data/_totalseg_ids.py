"""TotalSegmentator "total" class ids, taken from report-bbox's organ table (the one table).

``TOTAL_V2`` / ``TOTAL_V1`` map id -> name; ``V1_TO_V2`` maps v1 ids to v2 ids (the five v1 heart
parts become v2 ``heart``); v1 classes with no v2 "total" counterpart are listed in
:data:`V1_UNMAPPED` and become background (0).
"""

from __future__ import annotations

from report_bbox.organs import TOTALSEG_V1, TOTALSEG_V2
from report_bbox.organs import V1_TO_V2 as _V1_TO_V2

#: TotalSegmentator v2 "total" task: id -> name (117 classes).
TOTAL_V2: dict[int, str] = dict(TOTALSEG_V2)
#: TotalSegmentator v1 "total" task: id -> name (104 classes).
TOTAL_V1: dict[int, str] = dict(TOTALSEG_V1)
#: v1 id -> v2 id for every v1 class that has a v2 counterpart.
V1_TO_V2: dict[int, int] = {k: v for k, v in _V1_TO_V2.items() if v}
#: v1 names with no v2 "total" class; they become background.
V1_UNMAPPED: tuple[str, ...] = tuple(
    TOTAL_V1[k] for k in sorted(TOTAL_V1) if not _V1_TO_V2.get(k)
)
