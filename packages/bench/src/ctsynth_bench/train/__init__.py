"""One training engine for every stage of both systems.

:func:`train` runs AdamW (and an optional adversary, e.g. GAN discriminators) with optional EMA, gradient clipping and accumulation, bf16 autocast on
CUDA, step and time budgets, checkpoints with exact resume, and DDP under ``torchrun``. A run
folder holds ``manifest.json`` (:func:`start_run`), one folder per stage and a model card
(:func:`write_model_card`).
"""

from ._dist import DistInfo, ShardedBatches, dist_info, init_distributed
from ._ema import EMA
from ._errors import RunFolderError, TrainConfigError, TrainingError
from ._loop import (
    Adversary,
    AdversaryLossFn,
    LossFn,
    TrainConfig,
    TrainResult,
    cpu_threads_for,
    train,
)
from ._run import (
    data_hash,
    manifest_lock,
    plot_loss,
    read_manifest,
    read_metrics,
    start_run,
    write_model_card,
)
from ._state import read_trainer_state, save_model

__all__ = [
    "EMA",
    "Adversary",
    "AdversaryLossFn",
    "DistInfo",
    "LossFn",
    "RunFolderError",
    "ShardedBatches",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingError",
    "cpu_threads_for",
    "data_hash",
    "dist_info",
    "init_distributed",
    "manifest_lock",
    "plot_loss",
    "read_manifest",
    "read_metrics",
    "read_trainer_state",
    "save_model",
    "start_run",
    "train",
    "write_model_card",
]
