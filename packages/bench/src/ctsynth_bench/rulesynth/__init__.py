"""Rule-based lesion synthesizer: the default LesionDiffusion training set and the baseline.

Draws a structured report per lesion type (report-bbox's 14 LesionDiffusion types in 8 organ
systems, with their sizes and locations), places it in a real CT template, builds the mask from
the mask attributes and renders HU from the image attributes, following one documented rule table (:data:`RULES`) that ``measure``/``check_rules``
verify on the written images. See ``packages/bench/SYNTH.md``.
"""

from ._dataset import (
    DatasetSummary,
    SynthCase,
    Template,
    load_templates,
    synthesize_case,
    synthesize_dataset,
    template_from_files,
    write_case,
    write_dataset_json,
)
from ._deform import augment, deformation_field, flip_allowed, warp
from ._draw import draw_report_and_target
from ._render import estimate_noise, reference_hu, render_lesion
from ._rules import (
    LESION_TYPES,
    RULES,
    LesionSpec,
    Rule,
    SynthError,
    organ_of,
    rule_for,
    spec_from_report,
)
from ._shapes import lesion_mask
from ._stats import (
    CaseMeasure,
    RuleCheck,
    check_rules,
    load_and_measure,
    measure_case,
    summarize,
    type_agreement,
)

__all__ = [
    "LESION_TYPES",
    "RULES",
    "CaseMeasure",
    "DatasetSummary",
    "LesionSpec",
    "Rule",
    "RuleCheck",
    "SynthCase",
    "SynthError",
    "Template",
    "augment",
    "check_rules",
    "deformation_field",
    "draw_report_and_target",
    "estimate_noise",
    "flip_allowed",
    "lesion_mask",
    "load_and_measure",
    "load_templates",
    "measure_case",
    "organ_of",
    "reference_hu",
    "render_lesion",
    "rule_for",
    "spec_from_report",
    "summarize",
    "synthesize_case",
    "synthesize_dataset",
    "template_from_files",
    "type_agreement",
    "warp",
    "write_case",
    "write_dataset_json",
]
