"""Downstream evaluation of synthetic sets: export to nnU-Net v2, plan and preprocess.

See :mod:`ctsynth_bench.eval.nnunet`. nnU-Net itself is optional (the ``nnunet`` extra); only
:func:`plan_and_preprocess` needs it.
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
]
