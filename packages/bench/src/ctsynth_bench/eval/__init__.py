"""Evaluation of synthetic lesions and sets (``bench eval lesiondiffusion``).

* :mod:`.sets`: lesion crops on one grid from generated, rule-based and real lesions;
* :mod:`.alignment`: text alignment in CT (Fig. 4); :mod:`.quality`: FID / KID / LPIPS;
* :mod:`.downstream`: the Tab. 1 segmentation experiment with a small UNet or nnU-Net v2;
* :mod:`.nnunet`: export to nnU-Net v2, plan and preprocess, short training, prediction
  (nnU-Net is optional, the ``nnunet`` extra);
* :mod:`.lesiondiffusion`: the whole evaluation and its report.
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
    predict_nnunet,
    train_nnunet,
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
    "predict_nnunet",
    "quality_figure",
    "quality_table_md",
    "train_nnunet",
]
