"""Evaluation of synthetic sets: export to nnU-Net v2, plan and preprocess; text alignment and
image quality of generated lesions.

See :mod:`ctsynth_bench.eval.nnunet`, :mod:`ctsynth_bench.eval.alignment` and
:mod:`ctsynth_bench.eval.quality`. nnU-Net itself is optional (the ``nnunet`` extra); only
:func:`plan_and_preprocess` needs it.
"""

from .alignment import alignment_figures, alignment_table_md, measure_alignment
from .nnunet import (
    CT_CHANNEL,
    INSTALL_HINT,
    NNUNET_CONFIGURATIONS,
    NNUNET_ENV_VARS,
    NnunetCase,
    export_dataset,
    nnunet_env,
    plan_and_preprocess,
)
from .quality import measure_quality, quality_figure, quality_table_md

__all__ = [
    "CT_CHANNEL",
    "INSTALL_HINT",
    "NNUNET_CONFIGURATIONS",
    "NNUNET_ENV_VARS",
    "NnunetCase",
    "alignment_figures",
    "alignment_table_md",
    "export_dataset",
    "measure_alignment",
    "measure_quality",
    "nnunet_env",
    "plan_and_preprocess",
    "quality_figure",
    "quality_table_md",
]
