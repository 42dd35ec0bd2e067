"""Downstream lesion segmentation: does training on a synthetic set help segment real lesions?

Tab. 1 of LesionDiffusion (issue 17, section 3) trains a segmenter per lesion type on

* LesionDiffusion-generated lesions only,
* generated lesions, then fine-tuned on real lesions,
* real lesions only,
* rule-based (DiffTumor-like) synthetic lesions only, and rule-based then fine-tuned on real,

and scores each on held-out test sets with Dice and HD95. Everything works on
:class:`~ctsynth_bench.eval.sets.LesionCropSet` crops (one isotropic grid for every source), with a
binary segmenter (background / lesion): the small MONAI UNet of :mod:`ctsynth_bench.segment`
(``segmenter="unet"``) or nnU-Net v2 (``segmenter="nnunet"``, :mod:`ctsynth_bench.eval.nnunet`).

    seg = train_lesion_segmenter(train, minutes=3, run_dir=RUN)
    scores = score_segmenter(seg, test)          # per-crop Dice / HD95, mean, std
    result = run_downstream(generated=g, rule=r, real_train=rt, tests={...},
                            minutes_per_model=3, out=OUT)
    print(downstream_table_md(result))

Empty predictions: Dice 0 and HD95 = :func:`hd95_cap` (the crop diagonal, the largest distance
two voxels of a crop can have), counted in ``n_empty_pred``; a crop whose reference is empty too
scores Dice 1, HD95 0. HD95 follows ``shape_metrics.hd95``'s default ``"monai"`` convention (max of
the two directed 95th percentiles, mm).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..exceptions import BenchError
from ..segment import Segmenter, SegmenterConfig, load_segmenter, predict
from .sets import LesionCropSet

__all__ = [
    "LESION_WINDOW",
    "ROWS",
    "TYPE_ALIASES",
    "canonical_type",
    "downstream_figure",
    "downstream_table_md",
    "hd95_cap",
    "run_downstream",
    "score_predictions",
    "score_segmenter",
    "train_lesion_segmenter",
]

log = logging.getLogger(__name__)

#: HU window of the lesion segmenter: soft tissue and lesions (-300..400 HU) keep their contrast;
#: air, lung parenchyma and bone saturate.
LESION_WINDOW = (-300.0, 400.0)

#: Rows of the table, in order (Tab. 1 of LesionDiffusion plus the rule-based baseline).
ROW_LD = "LesionDiffusion synthetic only"
ROW_LD_FT = "LesionDiffusion synthetic -> fine-tuned on real"
ROW_REAL = "real only"
ROW_RULE = "rule-based synthetic only"
ROW_RULE_FT = "rule-based synthetic -> fine-tuned on real"
ROWS = (ROW_LD, ROW_LD_FT, ROW_REAL, ROW_RULE, ROW_RULE_FT)
_ROW_KEYS = {
    ROW_LD: "ld",
    ROW_LD_FT: "ld_ft",
    ROW_REAL: "real",
    ROW_RULE: "rule",
    ROW_RULE_FT: "rule_ft",
}

#: Names of one lesion type in different sets: the real cases' masks are ``"lung_tumor"``
#: (:data:`ctsynth_bench.eval.sets.REAL_LESION_TYPE`), reports say ``"lung_cancer"``.
TYPE_ALIASES: Mapping[str, str] = {"lung_tumor": "lung_cancer"}


def canonical_type(lesion_type: str) -> str:
    """The report vocabulary's name of ``lesion_type`` (``"lung_tumor"`` -> ``"lung_cancer"``)."""
    return TYPE_ALIASES.get(lesion_type, lesion_type)


def _of_type(s: LesionCropSet | None, lesion_type: str) -> LesionCropSet | None:
    """Crops of ``s`` whose type is ``lesion_type`` up to :data:`TYPE_ALIASES`; None if none."""
    if s is None:
        return None
    keep = np.array([canonical_type(t) == canonical_type(lesion_type) for t in s.lesion_type], bool)
    return s.select(keep) if keep.any() else None


# --------------------------------------------------------------------------------------- training


class _Crops(torch.utils.data.Dataset):
    def __init__(self, s: LesionCropSet) -> None:
        self.ct = torch.from_numpy(np.ascontiguousarray(s.ct, np.float32))
        self.lesion = torch.from_numpy(np.ascontiguousarray(s.lesion)).long()

    def __len__(self) -> int:
        return int(self.ct.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.ct[i][None], self.lesion[i]


def _flip(x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Flip each sample of ``x`` ``(B, 1, X, Y, Z)`` and ``y`` ``(B, X, Y, Z)`` along each spatial
    axis with probability 1/2 (draws from ``g``)."""
    draws = torch.rand((x.shape[0], 3), generator=g, device=g.device).cpu() < 0.5
    xs, ys = [], []
    for i in range(x.shape[0]):
        axes = [a for a in range(3) if draws[i, a]]
        xs.append(x[i].flip([a + 1 for a in axes]) if axes else x[i])
        ys.append(y[i].flip(axes) if axes else y[i])
    return torch.stack(xs), torch.stack(ys)


def _check_set(s: object, name: str) -> LesionCropSet:
    if not isinstance(s, LesionCropSet):
        raise BenchError(f"{name} must be a LesionCropSet, got {type(s).__name__}")
    if len(s) == 0:
        raise BenchError(f"{name} has no crops")
    return s


def train_lesion_segmenter(
    train: LesionCropSet,
    *,
    run_dir: str | os.PathLike[str],
    minutes: float | None = None,
    max_steps: int | None = None,
    init: Segmenter | None = None,
    seed: int = 0,
    stage: str = "segmenter",
    window: tuple[float, float] = LESION_WINDOW,
    channels: Sequence[int] = (16, 32, 64),
    batch_size: int = 4,
    lr: float = 2e-3,
    resume: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Segmenter:
    """Train a binary lesion segmenter (background / lesion) on the crops of ``train``.

    The :class:`~ctsynth_bench.segment.Segmenter` (MONAI UNet, CE + soft Dice on the lesion class,
    ``DiceCELoss`` pooled over the batch) is trained on the shared engine
    (:mod:`ctsynth_bench.train`) with random flips along each axis as augmentation.

    Args:
        train: training crops; ``train.ct`` HU ``(N, S, S, S)``, ``train.lesion`` the targets.
            ``S`` must be a multiple of ``2 ** (len(channels) - 1)``.
        run_dir: engine run folder; the stage writes ``run_dir/stage``.
        minutes / max_steps: training budget (at least one).
        init: a segmenter to fine-tune from ("synthetic, then fine-tuned on real"); its
            architecture and window are kept (``window`` and ``channels`` are then ignored).
        seed: seed of the initial weights, the data order and the flips.
        stage: engine stage name.
        window: HU window mapped to [-1, 1] (:data:`LESION_WINDOW`).
        channels: UNet widths.
        batch_size / lr: optimiser settings.
        resume: continue a killed stage from its trainer state.
        device: training device.
        progress: tqdm bar.

    Returns:
        The EMA network in eval mode.
    """
    from monai.losses import DiceCELoss

    from .. import train as engine

    _check_set(train, "train")
    if init is not None:
        if not isinstance(init, Segmenter):
            raise BenchError(f"init must be a Segmenter, got {type(init).__name__}")
        if init.config.num_classes != 2:
            raise BenchError(
                f"init has {init.config.num_classes} classes; a lesion segmenter has 2"
            )
        config = init.config
    else:
        config = SegmenterConfig(num_classes=2, channels=tuple(channels), window=tuple(window))
    if train.size % config.divisor:
        raise BenchError(
            f"crop size {train.size} must be a multiple of {config.divisor} for channels "
            f"{config.channels}"
        )
    torch.manual_seed(seed)
    seg = Segmenter(config=config)
    if init is not None:
        seg.load_state_dict({k: v.detach().cpu() for k, v in init.state_dict().items()})
    crit = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)

    def loss_fn(
        model: nn.Module, batch: Any, g: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        x, y = _flip(*batch, g)
        return crit(model(x.float()), y[:, None].long()), {}

    engine.train(
        seg,
        loss_fn,
        _Crops(train),
        run_dir=run_dir,
        stage=stage,
        config=engine.TrainConfig(
            max_steps=max_steps,
            minutes=minutes,
            batch_size=min(batch_size, len(train)),
            lr=lr,
            ema_decay=0.99,
            checkpoint_every=100,
            log_every=25,
            seed=seed,
        ),
        resume=resume,
        device=device,
        progress=progress,
    )
    return load_segmenter(Path(run_dir) / stage, device=device)


# ---------------------------------------------------------------------------------------- scoring


def hd95_cap(test: LesionCropSet) -> float:
    """HD95 given to an empty prediction (or an empty reference): the crop diagonal in mm,
    ``sqrt(3) * S * spacing``, at least any distance inside a crop."""
    return float(math.sqrt(3.0) * test.size * test.spacing)


def score_predictions(pred: np.ndarray, test: LesionCropSet) -> dict[str, Any]:
    """Dice and HD95 of binary predictions ``pred`` ``(N, S, S, S)`` against ``test.lesion``.

    Per crop: ``shape_metrics.dice`` and ``shape_metrics.hd95`` (mm, ``"monai"`` convention, the
    set's isotropic spacing). An empty prediction of a non-empty reference scores Dice 0 and HD95
    :func:`hd95_cap`; so does a non-empty prediction of an empty reference; both empty score Dice
    1 and HD95 0. Empty predictions are counted in ``n_empty_pred``.

    Returns:
        ``{"n", "dice", "hd95", "case", "dice_mean", "dice_std", "hd95_mean", "hd95_std",
        "n_empty_pred", "hd95_cap_mm"}`` (lists per crop; std is the population std).
    """
    from shape_metrics import dice, hd95

    pred = np.asarray(pred).astype(bool)
    if pred.shape != test.lesion.shape:
        raise BenchError(
            f"predictions have shape {pred.shape}, the test set's masks {test.lesion.shape}"
        )
    cap = hd95_cap(test)
    sp = (test.spacing,) * 3
    dices, hds, empty = [], [], 0
    for p, r in zip(pred, test.lesion, strict=True):
        empty += int(not p.any())
        if not p.any() and not r.any():
            d, h = 1.0, 0.0
        elif not p.any() or not r.any():
            d, h = 0.0, cap
        else:
            d, h = dice(p, r), min(hd95(p, r, sp), cap)
        dices.append(float(d))
        hds.append(float(h))
    n = len(dices)
    return {
        "n": n,
        "dice": dices,
        "hd95": hds,
        "case": list(test.case),
        "dice_mean": float(np.mean(dices)) if n else float("nan"),
        "dice_std": float(np.std(dices)) if n else float("nan"),
        "hd95_mean": float(np.mean(hds)) if n else float("nan"),
        "hd95_std": float(np.std(hds)) if n else float("nan"),
        "n_empty_pred": empty,
        "hd95_cap_mm": cap,
    }


def score_segmenter(seg: Segmenter, test: LesionCropSet, *, batch: int = 8) -> dict[str, Any]:
    """Predict every crop of ``test`` with ``seg`` (lesion = class 1) and score it with
    :func:`score_predictions`."""
    _check_set(test, "test")
    labels = predict(
        seg, torch.from_numpy(np.ascontiguousarray(test.ct[:, None], np.float32)), batch=batch
    )
    return score_predictions(labels.numpy() == 1, test)


# ------------------------------------------------------------------------------------ experiment


def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True))
    os.replace(tmp, path)


class _UnetBackend:
    """Trains and scores the MONAI UNet; a model is its engine run folder."""

    def __init__(
        self,
        *,
        minutes: float | None,
        max_steps: int | None,
        seed: int,
        window: tuple[float, float],
        progress: bool,
    ):
        self.minutes, self.max_steps, self.seed, self.progress = minutes, max_steps, seed, progress
        self.window = window

    def fit(self, train: LesionCropSet, folder: Path, init: Path | None) -> dict[str, Any]:
        base = load_segmenter(init / "run" / "segmenter") if init is not None else None
        run = folder / "run"
        resume = (run / "segmenter").is_dir()
        train_lesion_segmenter(
            train,
            run_dir=run,
            minutes=self.minutes,
            max_steps=self.max_steps,
            init=base,
            seed=self.seed,
            window=self.window,
            resume=resume,
            progress=self.progress,
        )
        man = json.loads((run / "manifest.json").read_text())
        st = man.get("stages", {}).get("segmenter", {})
        return {"steps": st.get("steps"), "train_seconds": st.get("seconds")}

    def score(self, folder: Path, test: LesionCropSet) -> dict[str, Any]:
        return score_segmenter(load_segmenter(folder / "run" / "segmenter"), test)


class _NnunetBackend:
    """Trains and scores nnU-Net v2 (3d_fullres, fold ``all``, :func:`.nnunet.train_nnunet`); a
    model is a raw dataset of the crops (an axis-aligned affine of the crop spacing), planned and
    preprocessed with nnU-Net's integrity check, and its short training under ``root``."""

    iterations_per_epoch = 25

    def __init__(self, *, minutes: float | None, max_steps: int | None, seed: int, root: Path):
        self.minutes, self.max_steps, self.seed, self.root = minutes, max_steps, seed, root

    def _dataset_id(self, folder: Path) -> int:
        f = folder / "dataset_id.json"
        if f.is_file():
            return int(json.loads(f.read_text()))
        used = {int(p.stem) for p in (self.root / "ids").glob("*.json")}
        ds_id = min(set(range(500, 1000)) - used)
        _atomic_json(self.root / "ids" / f"{ds_id}.json", str(folder))
        _atomic_json(f, ds_id)
        return ds_id

    def fit(self, train: LesionCropSet, folder: Path, init: Path | None) -> dict[str, Any]:
        from .nnunet import (
            NETWORK_FILE,
            NnunetCase,
            export_dataset,
            nnunet_env,
            plan_and_preprocess,
            train_nnunet,
        )

        t0 = time.monotonic()
        ds_id = self._dataset_id(folder)
        affine = np.diag([train.spacing] * 3 + [1.0])
        cases = [
            NnunetCase(f"crop{i:05d}", train.ct[i], train.lesion[i].astype(np.uint8), affine)
            for i in range(len(train))
        ]
        export_dataset(
            cases,
            nnunet_env(self.root)["nnUNet_raw"],
            dataset_id=ds_id,
            name=f"{folder.parent.name}_{folder.name}",
            labels={"background": 0, "lesion": 1},
            overwrite=True,
        )
        plan_and_preprocess(ds_id, self.root)
        it = min(self.iterations_per_epoch, self.max_steps or self.iterations_per_epoch)
        epochs = 10**6 if self.max_steps is None else max(1, math.ceil(self.max_steps / it))
        ckpt = None
        if init is not None:
            ckpt = Path(json.loads((init / "model.json").read_text())) / "fold_all" / NETWORK_FILE
        model_dir = train_nnunet(
            ds_id,
            self.root,
            epochs=epochs,
            iterations_per_epoch=it,
            minutes=self.minutes,
            init=ckpt,
            seed=self.seed,
        )
        _atomic_json(folder / "model.json", str(model_dir))
        done = json.loads((model_dir / "fold_all" / "short_training.json").read_text())
        return {
            "steps": done["iterations"],
            "train_seconds": done["seconds"],
            "total_seconds": time.monotonic() - t0,
        }

    def score(self, folder: Path, test: LesionCropSet) -> dict[str, Any]:
        from .nnunet import predict_nnunet

        model_dir = Path(json.loads((folder / "model.json").read_text()))
        work = folder / "predict"
        labels = predict_nnunet(model_dir, test.ct, spacing=test.spacing, work_dir=work)
        shutil.rmtree(work, ignore_errors=True)
        return score_predictions(labels == 1, test)


def run_downstream(
    *,
    generated: LesionCropSet,
    rule: LesionCropSet | None,
    real_train: LesionCropSet | None,
    tests: Mapping[str, LesionCropSet],
    out: str | os.PathLike[str],
    minutes_per_model: float | None = None,
    max_steps_per_model: int | None = None,
    types: Sequence[str] | None = None,
    segmenter: Literal["unet", "nnunet"] = "unet",
    window: tuple[float, float] = LESION_WINDOW,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Tab. 1 of LesionDiffusion on crop sets: train a segmenter per row and lesion type, score it
    on every test set of that type.

    For each lesion type of ``generated`` (or ``types``), the rows of :data:`ROWS` are trained:
    generated only; generated then fine-tuned on ``real_train`` (only when ``real_train`` has that
    type, up to :data:`TYPE_ALIASES`); real only (same); rule-based only and rule-based then
    fine-tuned (when ``rule`` has the type). Each model gets the same budget (the fine-tuning
    stage gets it again). Every finished model and score is kept under ``out/models/<type>/<row>``
    and skipped when the call is repeated, so a killed run resumes; the result is written to
    ``out/downstream.json`` after every model.

    Args:
        generated: LesionDiffusion-generated crops (its types define the table's types).
        rule: rule-based synthetic crops (the DiffTumor-like baseline), or None.
        real_train: real crops for the real-only and fine-tuned rows, or None.
        tests: test sets by column name, e.g. ``{"real lung tumours": ..., "held-out rule": ...}``;
            a test set scores the rows of the types it has.
        out: output folder.
        minutes_per_model / max_steps_per_model: budget of each training (at least one).
        types: restrict to these lesion types.
        segmenter: ``"unet"`` (:func:`train_lesion_segmenter`) or ``"nnunet"`` (nnU-Net v2).
        window: the UNet's HU window (nnU-Net normalises by its own plan).
        seed: training seed.
        progress: tqdm bar over the models.

    Returns:
        JSON-ready ``{"segmenter", "budget", "types", "rows": [{"type", "row", "train_n",
        "steps", "train_seconds", "scores": {test: score_predictions(...)}}], ...}``.
    """
    from tqdm.auto import tqdm

    _check_set(generated, "generated")
    if segmenter not in ("unet", "nnunet"):
        raise BenchError(f"segmenter must be 'unet' or 'nnunet', got {segmenter!r}")
    if minutes_per_model is None and max_steps_per_model is None:
        raise BenchError("give a budget: minutes_per_model and/or max_steps_per_model")
    if not tests:
        raise BenchError("tests is empty; give at least one test set")
    for name, t in tests.items():
        _check_set(t, f"tests[{name!r}]")
        if t.spacing != generated.spacing or t.size != generated.size:
            raise BenchError(f"tests[{name!r}] is on another crop grid than generated")
    for name, s in (("rule", rule), ("real_train", real_train)):
        if s is not None and (s.spacing != generated.spacing or s.size != generated.size):
            raise BenchError(f"{name} is on another crop grid than generated")
    all_types = [canonical_type(t) for t in generated.types()]
    if types is not None:
        unknown = [t for t in types if canonical_type(t) not in all_types]
        if unknown:
            raise BenchError(f"types {unknown} are not in generated (it has {all_types})")
        all_types = [t for t in all_types if t in {canonical_type(x) for x in types}]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if segmenter == "unet":
        backend: Any = _UnetBackend(
            minutes=minutes_per_model,
            max_steps=max_steps_per_model,
            seed=seed,
            window=tuple(window),
            progress=False,
        )
    else:
        backend = _NnunetBackend(
            minutes=minutes_per_model, max_steps=max_steps_per_model, seed=seed, root=out / "nnunet"
        )

    plan: list[tuple[str, str, LesionCropSet, str | None]] = []  # type, row, train set, init row
    for t in all_types:
        gen_t = _of_type(generated, t)
        real_t = _of_type(real_train, t)
        rule_t = _of_type(rule, t)
        assert gen_t is not None
        plan.append((t, ROW_LD, gen_t, None))
        if real_t is not None:
            plan.append((t, ROW_LD_FT, real_t, ROW_LD))
            plan.append((t, ROW_REAL, real_t, None))
        if rule_t is not None:
            plan.append((t, ROW_RULE, rule_t, None))
            if real_t is not None:
                plan.append((t, ROW_RULE_FT, real_t, ROW_RULE))

    result: dict[str, Any] = {
        "segmenter": segmenter,
        "budget": {
            "minutes_per_model": minutes_per_model,
            "max_steps_per_model": max_steps_per_model,
        },
        "seed": seed,
        "window": list(window) if segmenter == "unet" else None,
        "types": all_types,
        "tests": {
            name: {"n": len(t), "types": t.types(), "source": t.source} for name, t in tests.items()
        },
        "crop": {"size": generated.size, "spacing": generated.spacing},
        "rows": [],
    }
    bar = tqdm(plan, desc="downstream", disable=not progress)
    for t, row, train_set, init_row in bar:
        folder = out / "models" / t / _ROW_KEYS[row]
        init = out / "models" / t / _ROW_KEYS[init_row] if init_row else None
        bar.set_postfix_str(f"{t}: {row}")
        done = folder / "trained.json"
        if done.is_file():
            info = json.loads(done.read_text())
        else:
            info = backend.fit(train_set, folder, init)
            info["train_n"] = len(train_set)
            _atomic_json(done, info)
        scores = {}
        for name, test in tests.items():
            test_t = _of_type(test, t)
            if test_t is None:
                continue
            f = folder / "scores" / f"{name}.json"
            if f.is_file():
                scores[name] = json.loads(f.read_text())
            else:
                scores[name] = backend.score(folder, test_t)
                _atomic_json(f, scores[name])
        result["rows"].append({"type": t, "row": row, **info, "scores": scores})
        _atomic_json(out / "downstream.json", result)
    _atomic_json(out / "downstream.json", result)
    return result


# ---------------------------------------------------------------------------------------- reports


def downstream_table_md(result: Mapping[str, Any]) -> str:
    """A Markdown table: one line per (type, row), Dice and HD95 (mean ± std) per test set."""
    tests = list(result["tests"])
    head = ["type", "training", *[f"{n}: Dice" for n in tests], *[f"{n}: HD95 mm" for n in tests]]
    head += ["steps", "s/model"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["type"], r["row"]]
        for key, fmt in (("dice", "{:.3f} ± {:.3f}"), ("hd95", "{:.1f} ± {:.1f}")):
            for n in tests:
                s = r["scores"].get(n)
                if s is None:
                    cells.append("-")
                    continue
                txt = fmt.format(s[f"{key}_mean"], s[f"{key}_std"])
                if key == "hd95" and s["n_empty_pred"]:
                    txt += f" ({s['n_empty_pred']}/{s['n']} empty)"
                cells.append(txt)
        secs = r.get("train_seconds")
        cells += [str(r.get("steps")), "-" if secs is None else f"{secs:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def downstream_figure(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """A bar chart of mean Dice (± std) per row and test set, one panel per lesion type (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(result["types"]) or ["-"]
    tests = list(result["tests"])
    fig, axes = plt.subplots(1, len(types), figsize=(5.5 * len(types), 4.2), squeeze=False)
    width = 0.8 / max(len(tests), 1)
    for ax, t in zip(axes[0], types, strict=True):
        rows = [r for r in result["rows"] if r["type"] == t]
        x = np.arange(len(rows))
        for j, n in enumerate(tests):
            mean = [r["scores"][n]["dice_mean"] if n in r["scores"] else np.nan for r in rows]
            std = [r["scores"][n]["dice_std"] if n in r["scores"] else 0.0 for r in rows]
            ax.bar(
                x + (j - (len(tests) - 1) / 2) * width, mean, width, yerr=std, capsize=2, label=n
            )
        ax.set_xticks(x, [r["row"].replace(" -> ", "\n-> ") for r in rows], fontsize=7, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice")
        ax.set_title(t)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
