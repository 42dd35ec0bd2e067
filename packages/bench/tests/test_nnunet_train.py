"""nnU-Net v2 short training and prediction on the CPU, end to end on a tiny crop set.

Export (checked by nnU-Net's own integrity check in plan_and_preprocess) -> train_nnunet (the
short trainer, fold "all") -> predict_nnunet -> the downstream score; one run of about a minute.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from ctsynth_bench.eval.downstream import score_predictions
from ctsynth_bench.eval.nnunet import (
    NnunetCase,
    export_dataset,
    nnunet_env,
    plan_and_preprocess,
    predict_nnunet,
    train_nnunet,
)
from ctsynth_bench.eval.sets import LesionCropSet
from ctsynth_bench.exceptions import BenchError

S, SP = 32, 1.5


def spheres(n: int, seed: int) -> LesionCropSet:
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(S)] * 3, indexing="ij")).astype(np.float32)
    ct, les = [], []
    for _ in range(n):
        c = rng.uniform(S * 0.3, S * 0.7, 3)
        m = ((g - c[:, None, None, None]) ** 2).sum(0) <= rng.uniform(5, 8) ** 2
        ct.append(np.where(m, 150.0, 30.0) + rng.normal(0, 10, (S,) * 3))
        les.append(m)
    return LesionCropSet(
        ct=np.stack(ct).astype(np.float32),
        lesion=np.stack(les),
        organs=np.zeros((n, S, S, S), np.int16),
        spacing=SP,
        lesion_type=["liver_cyst"] * n,
        reports=[{}] * n,
        case=[f"s{i}" for i in range(n)],
        source="rule",
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    train = spheres(6, seed=0)
    affine = np.diag([SP, SP, SP, 1.0])
    cases = [
        NnunetCase(f"c{i}", train.ct[i], train.lesion[i].astype(np.uint8), affine)
        for i in range(len(train))
    ]
    export_dataset(
        cases,
        nnunet_env(root)["nnUNet_raw"],
        dataset_id=7,
        name="spheres",
        labels={"background": 0, "lesion": 1},
    )
    plan_and_preprocess(7, root)  # nnU-Net's --verify_dataset_integrity included
    t0 = time.monotonic()
    model = train_nnunet(7, root, epochs=2, iterations_per_epoch=6, initial_lr=1e-2)
    return root, model, time.monotonic() - t0


def test_short_training_writes_a_model_nnunet_can_use(trained):
    _, model, seconds = trained
    assert model.name == "nnUNetTrainerShort__nnUNetPlans__3d_fullres"
    info = json.loads((model / "fold_all" / "short_training.json").read_text())
    assert info["epochs"] == 2 and info["iterations"] == 12
    assert (model / "plans.json").is_file() and (model / "dataset.json").is_file()
    assert seconds < 120


def test_prediction_is_on_the_crop_grid_and_finds_bright_spheres(trained, tmp_path):
    _, model, _ = trained
    test = spheres(3, seed=1)
    labels = predict_nnunet(model, test.ct, spacing=SP, work_dir=tmp_path)
    assert labels.shape == test.lesion.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1}
    s = score_predictions(labels == 1, test)
    # 12 iterations on 6 crops: far from converged, but it must beat an empty prediction and
    # a prediction of everything
    assert s["dice_mean"] > 0.3, s
    everything = score_predictions(np.ones_like(test.lesion), test)
    assert s["dice_mean"] > everything["dice_mean"]


def test_bad_training_arguments_fail(trained):
    root, _, _ = trained
    with pytest.raises(BenchError, match="not a file"):
        train_nnunet(7, root, init=root / "missing.pth")
    with pytest.raises(BenchError, match="not preprocessed"):
        train_nnunet(8, root)
    with pytest.raises(BenchError, match="epochs"):
        train_nnunet(7, root, epochs=0)
