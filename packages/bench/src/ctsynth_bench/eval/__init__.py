"""Downstream evaluation of synthetic sets: nnU-Net v2 export, planning, short training, prediction.

See :mod:`ctsynth_bench.eval.nnunet`. nnU-Net itself is optional (the ``nnunet`` extra); only
:func:`plan_and_preprocess`, :func:`train_nnunet` and :func:`predict_nnunet` need it. The Tab. 1
experiment (segmenters trained on synthetic, real and fine-tuned sets) is
:mod:`ctsynth_bench.eval.downstream`.
"""

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

__all__ = [
    "CT_CHANNEL",
    "INSTALL_HINT",
    "NNUNET_CONFIGURATIONS",
    "NNUNET_ENV_VARS",
    "NnunetCase",
    "export_dataset",
    "nnunet_env",
    "plan_and_preprocess",
    "predict_nnunet",
    "train_nnunet",
]
