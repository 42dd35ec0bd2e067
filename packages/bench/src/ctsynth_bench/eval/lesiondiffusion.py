"""``bench eval lesiondiffusion``: the paper's experiments on a trained system, as one report.

``evaluate_lesiondiffusion(run, out=DIR)`` writes ``DIR/report.md`` with PNGs and one JSON per part:

1. **Text alignment (Fig. 4)** (:mod:`.alignment`): per lesion type, prompts that differ in one
   attribute, run with the same box and noise: convexity and sphericity of round-like vs irregular
   masks, lesion-minus-organ HU by density, HU spread by density variation, edge sharpness by
   margin, requested vs realised size, location rule held; and the same with the text removed.
2. **Image quality** (:mod:`.quality`): FID, KID (2.5D) and LPIPS of generated lesion crops against
   real lung tumours and against rule-based lesions.
3. **Downstream segmentation (Tab. 1)** (:mod:`.downstream`): a segmenter trained on
   LesionDiffusion's lesions only, on them then fine-tuned on real ones, on real ones only, and the
   rule-based baseline, scored by Dice and HD95 on held-out rule-based cases and on real lung
   tumours.
4. **Ablation without text (Tab. 2)**: a system trained with the text removed
   (``bench train lesiondiffusion --no-text``) against one trained the same way with the text,
   scored the same way (text control on held-out boxes, the realised attributes against the
   report, downstream Dice).
5. **Generalisation to an unseen lesion type (Fig. 3)**: a system trained with one type held out
   synthesises it from its report alone; its placement, size and attributes are measured against
   the report, beside the system that saw the type and the rule-based synthesizer.

Data: the rule-based sets (training and a held-out test set, drawn with different seeds) are made
in the bundled templates unless ``data`` gives a lesion set; the real lung tumours are those of
``bench data fetch`` (``lung1`` and ``rider`` for testing; ``chest``, the bundled resampled
``lung2``, for training). Every part is kept in ``out/parts/`` when it finishes, so an interrupted
evaluation run again with the same settings resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import report_bbox
from scipy import ndimage

from ..exceptions import BenchError

__all__ = [
    "EvalError",
    "EvalSettings",
    "EvalSummary",
    "evaluate_lesiondiffusion",
    "synthesize_typed_set",
]

log = logging.getLogger(__name__)

EVAL_INFO = "eval.json"
TEMPLATES = ("abdomen", "chest")


class EvalError(BenchError):
    """An evaluation that cannot run: bad settings, missing systems or data."""


@dataclass(frozen=True)
class EvalSettings:
    """What ``bench eval lesiondiffusion`` measures and how much.

    Attributes:
        types: lesion types of the downstream experiments (sections 3 and 4).
        align_types: lesion types of the text-alignment check (None: every type the templates hold).
        n_align: boxes per lesion type in section 1.
        n_generated: LesionDiffusion lesions per type for sections 2 and 3.
        n_rule_train / n_rule_test: rule-based cases (14 types cycled) for training and testing.
        crops_per_lesion: differently offset crops per lesion for segmentation.
        segmenter: ``"unet"`` (a small MONAI UNet) or ``"nnunet"`` (nnU-Net v2).
        seg_minutes: training budget of each segmenter (minutes).
        seg_max_steps: or a step budget (tests).
        n_control: held-out boxes of the section 4 text-control check.
        held_out_type: the lesion type of section 5.
        n_held_out: lesions of that type per arm in section 5.
        train_minutes / train_max_steps: per-stage budget of the section 4/5 systems trained here.
        train_independent: independent-attribute crops of those systems (as ``bench train``).
        train_parallel: train LMNet and LINet at once in two processes (on two or more cores).
        real_train / real_test: real lesion cases (``bench data list``).
        seed: seed of every draw.
        steps: DDIM steps (None: the preset's).
    """

    types: tuple[str, ...] = ("lung_cancer", "liver_cancer", "kidney_cancer")
    align_types: tuple[str, ...] | None = None
    n_align: int = 4
    n_generated: int = 8
    n_rule_train: int = 140
    n_rule_test: int = 42
    crops_per_lesion: int = 4
    segmenter: str = "unet"
    seg_minutes: float | None = 1.0
    seg_max_steps: int | None = None
    n_control: int = 20
    held_out_type: str = "bladder_cancer"
    n_held_out: int = 12
    train_minutes: float | None = None
    train_max_steps: int | None = 1200
    train_independent: int = 1200
    train_parallel: bool = True
    real_train: tuple[str, ...] = ("chest",)
    real_test: tuple[str, ...] = ("lung1", "rider")
    seed: int = 0
    steps: int | None = None

    def __post_init__(self) -> None:
        allowed = tuple(report_bbox.LESION_TYPES)
        for name in ("types", "align_types"):
            bad = [t for t in getattr(self, name) or () if t not in allowed]
            if bad:
                raise EvalError(
                    f"{name}: unknown lesion type(s) {bad}; allowed: {', '.join(allowed)}"
                )
        if self.held_out_type not in allowed:
            raise EvalError(
                f"held_out_type: unknown lesion type {self.held_out_type!r}; allowed: {', '.join(allowed)}"
            )
        if self.segmenter not in ("unet", "nnunet"):
            raise EvalError(f"segmenter must be 'unet' or 'nnunet', got {self.segmenter!r}")
        for name in (
            "n_align",
            "n_generated",
            "n_rule_train",
            "n_rule_test",
            "crops_per_lesion",
            "n_control",
            "n_held_out",
        ):
            if int(getattr(self, name)) < 1:
                raise EvalError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seg_minutes is None and self.seg_max_steps is None:
            raise EvalError("give the segmenters a budget: seg_minutes or seg_max_steps")
        if self.train_minutes is None and self.train_max_steps is None:
            raise EvalError(
                "give the section 4/5 systems a budget: train_minutes or train_max_steps"
            )
        patient = {"chest": "lung2"}  # the bundled chest CT is lung2 resampled
        overlap = {patient.get(c, c) for c in self.real_train} & {
            patient.get(c, c) for c in self.real_test
        }
        if overlap:
            raise EvalError(
                f"real_train {self.real_train} and real_test {self.real_test} share the patient(s) "
                f"{sorted(overlap)} ('chest' is 'lung2' resampled); a test case must be unseen"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


@dataclass
class EvalSummary:
    """What :func:`evaluate_lesiondiffusion` produced."""

    out: Path
    report: Path
    parts: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class _Parts:
    """Finished parts of an evaluation in ``out/parts/<name>.json`` (resume)."""

    def __init__(self, root: Path, progress: bool) -> None:
        self.root = root / "parts"
        self.seconds: dict[str, float] = {}
        self.progress = progress

    def has(self, name: str) -> bool:
        """Whether the part ``name`` finished in an earlier call (its result is kept)."""
        return (self.root / f"{name}.json").is_file()

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        path = self.root / f"{name}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            self.seconds[name] = float(rec.get("seconds", 0.0))
            log.info("eval: %s kept from an earlier run", name)
            return rec["result"]
        if self.progress:
            print(f"[eval] {name} ...", flush=True)
        t0 = time.perf_counter()
        result = fn()
        sec = time.perf_counter() - t0
        self.seconds[name] = sec
        _atomic_json(path, {"result": result, "seconds": sec})
        return json.loads(path.read_text())["result"]


def _template_inputs(names: Sequence[str]) -> dict[str, Any]:
    from ..data import load_case
    from ..lesiondiffusion.pipeline import ct_input_from_arrays

    out = {}
    for name in names:
        c = load_case(name)
        out[name] = ct_input_from_arrays(
            np.asarray(c.ct), np.asarray(c.organs), c.affine, name=name
        )
    return out


def _best_template(lesion_type: str, inputs: dict[str, Any]) -> str:
    from ..lesiondiffusion.run import _template_for

    best = _template_for(lesion_type, inputs)
    if best is None:
        raise EvalError(f"no template of {list(inputs)} holds the organ of {lesion_type}")
    return best


def synthesize_typed_set(
    system: Any,
    out: str | os.PathLike[str],
    *,
    types: Sequence[str],
    n_per_type: int,
    seed: int,
    templates: dict[str, Any],
    steps: int | None = None,
    progress: bool = False,
) -> list[Path]:
    """``n_per_type`` lesions of each type by ``system`` into ``out/<type>/`` (our lesion layout).

    Each type goes into the template holding most of its organ; the batches are resumable
    (``pipeline.synthesize_cases``). Returns the per-type folders.
    """
    from ..lesiondiffusion.pipeline import ReportSource, synthesize_cases

    folders = []
    for k, lt in enumerate(types):
        inp = templates[_best_template(lt, templates)]
        folder = Path(out) / lt
        synthesize_cases(
            system,
            inp,
            ReportSource(lesion_type=lt),
            out=folder,
            n=n_per_type,
            seed=seed * 1000 + k,
            prefix=f"{lt}_",  # case ids unique across the types
            steps=steps,
            progress=progress,
        )
        folders.append(folder)
    return folders


def _rule_set(out: Path, *, n: int, seed: int, types: Sequence[str] | None, progress: bool) -> Path:
    from ..rulesynth import load_templates, synthesize_dataset

    synthesize_dataset(
        out,
        n=n,
        templates=load_templates(list(TEMPLATES)),
        types=types,
        seed=seed,
        prefix="rule_",
        progress=progress,
    )
    return out


def _crops(
    folders: Sequence[Path],
    *,
    source: str,
    jitter: float,
    per: int,
    seed: int,
    types: Sequence[str] | None = None,
):
    from .sets import LesionCropSet, crops_from_folder

    sets = [
        crops_from_folder(f, source=source, jitter=jitter, per_lesion=per, seed=seed, types=types)
        for f in folders
    ]
    sets = [s for s in sets if len(s)]
    if not sets:
        raise EvalError(f"no lesions of {list(types or [])} in {[str(f) for f in folders]}")
    return LesionCropSet.concat(sets)


def _agreement(folders: Sequence[Path]) -> dict[str, Any]:
    """The realised attributes of a lesion set against the rule table, plus placement and size."""
    from ..lesiondiffusion.pipeline import _location_class
    from ..lesiondiffusion.reports import _location
    from ..rulesynth._stats import check_rules, load_and_measure, type_agreement

    measures = []
    placement: list[float] = []
    location_ok: list[bool] = []
    size_err: list[float] = []
    for f in folders:
        measures += load_and_measure(f)
        for rp in sorted((Path(f) / "reports").glob("*.json")):
            meta = json.loads(rp.read_text())
            rep = report_bbox.Report.from_dict(meta["report"])
            from ..data import read_nifti

            les, affine = read_nifti(Path(f) / "labelsTr" / f"{rp.stem}.nii.gz")
            org, _ = read_nifti(Path(f) / "organs" / f"{rp.stem}.nii.gz")
            m = les > 0
            ids = report_bbox.organ_ids(rep.organ)
            # the written organ map labels the lesion itself as organ: judge the shell around it
            shell = ndimage.binary_dilation(m, iterations=1) & ~m
            placement.append(float(np.isin(org[shell], ids).mean()) if shell.any() else 0.0)
            loc = _location(m, org, rep.organ)
            want = _location_class(rep)
            location_ok.append(loc == want)
            spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
            idx = np.argwhere(m)
            ext = (idx.max(0) - idx.min(0) + 1) * spacing if m.any() else np.zeros(3)
            req = np.sort(np.asarray(rep.size, float))
            size_err.append(float(np.mean(np.abs(np.sort(ext) - req) / req)))
    per_type = type_agreement(measures)
    checks = check_rules(measures)
    made = sum(v[1] for v in per_type.values())
    passed = sum(v[2] for v in per_type.values())
    return {
        "n": len(measures),
        "rule_checks": made,
        "rule_agreement": passed / made if made else float("nan"),
        "per_type": {
            k: {"cases": v[0], "checks": v[1], "passed": v[2]} for k, v in per_type.items()
        },
        "per_rule": [
            {
                "attribute": c.attribute,
                "value": c.value,
                "quantity": c.quantity,
                "n": len(c.measured),
                "agreement": c.agreement,
            }
            for c in checks
        ],
        "shell_in_organ": float(np.mean(placement)) if placement else float("nan"),
        "location_held": float(np.mean(location_ok)) if location_ok else float("nan"),
        "size_error": float(np.median(size_err)) if size_err else float("nan"),
        "size_within_30": float(np.mean(np.asarray(size_err) <= 0.3)) if size_err else float("nan"),
    }


def _train_system(
    out: Path,
    *,
    rule_dir: Path,
    s: EvalSettings,
    no_text: bool = False,
    hold_out: Sequence[str] = (),
    progress: bool,
) -> Path:
    from ..lesiondiffusion.presets import get_preset
    from ..lesiondiffusion.system import MANIFEST
    from ..lesiondiffusion.training import train_system

    # only folders inside the evaluation are trained (a given system is never written to); one
    # trained by an earlier, interrupted call is continued to the same budget
    resume = (out / MANIFEST).is_file() or (out / "crops.npz").is_file()
    train_system(
        preset=get_preset("demo"),
        out=out,
        data_dir=rule_dir,
        stages=("lmnet", "linet"),
        minutes=s.train_minutes,
        max_steps=s.train_max_steps,
        resume=resume,
        no_text=no_text,
        independent=s.train_independent,
        seed=s.seed,
        progress=progress,
        parallel=s.train_parallel and (os.cpu_count() or 1) >= 2,
        templates=TEMPLATES,
        hold_out=tuple(hold_out),
    )
    return out


def _system_facts(folder: Path) -> dict[str, Any]:
    from ..lesiondiffusion.system import MANIFEST

    man = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else {}
    log_path = folder / "train_log.json"
    steps = {}
    if log_path.is_file():
        for run in json.loads(log_path.read_text()).get("runs", []):
            for stage, r in run.get("stages", {}).items():
                steps[stage] = r.get("steps", r.get("step"))
    return {
        "folder": str(folder),
        "text": man.get("text", True),
        "hold_out": man.get("hold_out", []),
        "templates": man.get("templates"),
        "steps": steps,
    }


def evaluate_lesiondiffusion(
    run: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    settings: EvalSettings | None = None,
    reference_run: str | os.PathLike[str] | None = None,
    no_text_run: str | os.PathLike[str] | None = None,
    held_out_run: str | os.PathLike[str] | None = None,
    sections: Sequence[int] = (1, 2, 3, 4, 5),
    progress: bool = False,
) -> EvalSummary:
    """Evaluate the LesionDiffusion system of ``run`` (see the module docstring).

    Args:
        run: a run folder (``bench run lesiondiffusion --out``, ``bench train lesiondiffusion``).
        out: the evaluation folder (created; an earlier evaluation with the same settings resumes).
        data: a lesion set in our layout to use as the rule-based training set (default: made here).
        settings: :class:`EvalSettings` (default: the demo sizes).
        reference_run / no_text_run / held_out_run: the section 4/5 systems, when trained already
            (``bench train lesiondiffusion [--no-text] [--hold-out TYPE] --data <rule set>``);
            each missing one is trained here with ``settings.train_minutes`` per stage.
        sections: which of the five sections to run.
        progress: progress lines and bars.

    Raises:
        EvalError: bad settings, ``out`` holding another evaluation, a missing system or case.
    """

    from ..lesiondiffusion.system import MANIFEST, LesionDiffusionSystem

    s = settings or EvalSettings()
    bad = [k for k in sections if k not in (1, 2, 3, 4, 5)]
    if bad:
        raise EvalError(f"sections: unknown {bad}; allowed 1 to 5")
    run = Path(run)
    if not (run / MANIFEST).is_file():
        raise EvalError(f"{run}: not a LesionDiffusion run folder (no {MANIFEST})")
    for name, folder in (
        ("reference_run", reference_run),
        ("no_text_run", no_text_run),
        ("held_out_run", held_out_run),
    ):
        if folder is not None and not (Path(folder) / MANIFEST).is_file():
            raise EvalError(f"{name} {folder}: not a LesionDiffusion run folder (no {MANIFEST})")
    if data is not None and not (Path(data) / "reports").is_dir():
        raise EvalError(
            f"--data {data}: not a lesion set (expected imagesTr, labelsTr, organs, reports)"
        )
    root = Path(out)
    info = {
        "system": "lesiondiffusion",
        "run": str(run.resolve()),
        "data": str(Path(data).resolve()) if data else None,
        "settings": s.to_dict(),
        "systems": {
            k: str(Path(v).resolve()) if v else None
            for k, v in (
                ("reference", reference_run),
                ("no_text", no_text_run),
                ("held_out", held_out_run),
            )
        },
    }
    if root.exists() and any(root.iterdir()):
        old = root / EVAL_INFO
        if not old.is_file():
            raise EvalError(
                f"{root} is a non-empty folder that is not an evaluation; give a new --out"
            )
        prev = json.loads(old.read_text())
        if _fingerprint(prev.get("key")) != _fingerprint(info):
            raise EvalError(
                f"{root} holds an evaluation with other settings; give a new --out or remove it"
            )
    # the real lesions are checked before anything is written
    from .sets import real_lesion_crops

    if {2, 3, 4} & set(sections):
        real_lesion_crops(list(s.real_test) + list(s.real_train), per_lesion=1)
    root.mkdir(parents=True, exist_ok=True)
    _atomic_json(root / EVAL_INFO, {"key": info})

    parts = _Parts(root, progress)
    system = LesionDiffusionSystem.load(run)
    templates = _template_inputs(TEMPLATES)
    figures: dict[str, Path] = {}
    fig_dir = root / "figures"
    results: dict[str, Any] = {
        "system": _system_facts(run),
        "preset": system.preset.name if hasattr(system.preset, "name") else "demo",
        "data_dir": str(data) if data is not None else None,
    }

    # ---- data
    rule_train = Path(data) if data is not None else root / "data" / "rule_train"
    rule_test = root / "data" / "rule_test"
    gen_root = root / "data" / "generated"
    want = set(sections)
    # each set is a part of its own: a later call with more sections makes only what is missing
    if data is None and want & {2, 3, 4, 5}:
        parts.run(
            "rule_train",
            lambda: str(
                _rule_set(
                    rule_train, n=s.n_rule_train, seed=s.seed + 1, types=None, progress=progress
                )
            ),
        )
    if want & {3, 4}:
        parts.run(
            "rule_test",
            lambda: str(
                _rule_set(
                    rule_test, n=s.n_rule_test, seed=s.seed + 2, types=None, progress=progress
                )
            ),
        )
    if want & {2, 3}:
        # lung cancer always: it is the type with real lesions (section 2)
        gen_types = sorted(set(s.types) | {"lung_cancer"})
        parts.run(
            "generated",
            lambda: [
                str(f)
                for f in synthesize_typed_set(
                    system,
                    gen_root,
                    types=gen_types,
                    n_per_type=s.n_generated,
                    seed=s.seed,
                    templates=templates,
                    steps=s.steps,
                    progress=progress,
                )
            ],
        )

    # ---- 1. text alignment
    if 1 in want or parts.has("alignment"):
        from ..rulesynth import load_templates
        from .alignment import alignment_figures, alignment_table_md, measure_alignment

        def align() -> dict[str, Any]:
            return measure_alignment(
                system,
                types=s.align_types,
                n_per_type=s.n_align,
                seed=s.seed,
                steps=s.steps,
                templates=load_templates(list(TEMPLATES)),
                progress=progress,
            )

        results["alignment"] = parts.run("alignment", align)
        figures.update(alignment_figures(results["alignment"], fig_dir))
        results["alignment_md"] = alignment_table_md(results["alignment"])

    # ---- 2. image quality
    if 2 in want or parts.has("quality"):
        from .quality import measure_quality, quality_figure, quality_table_md
        from .sets import crops_from_folder

        def quality() -> dict[str, Any]:
            # lung cancer is the type with real lesions: generated vs real vs rule-based
            gen = _crops(
                [gen_root / "lung_cancer"], source="generated", jitter=0.0, per=1, seed=s.seed
            )
            real = real_lesion_crops(
                list(s.real_test) + list(s.real_train), per_lesion=8, jitter=0.05, seed=s.seed
            )
            refs = {"real lung tumours": real}
            rule_lung = crops_from_folder(
                rule_train, source="rule", per_lesion=1, seed=s.seed, types=["lung_cancer"]
            )
            if len(rule_lung) >= 2:  # a user's set may have no lung lesions
                refs["rule-based lung_cancer"] = rule_lung
            gen_all = _crops(
                [gen_root / t for t in s.types], source="generated", jitter=0.0, per=1, seed=s.seed
            )
            res = {"lung_cancer": measure_quality(gen, refs, seed=s.seed, progress=progress)}
            rule = crops_from_folder(
                rule_train, source="rule", per_lesion=1, seed=s.seed, types=list(s.types)
            )
            if len(rule) >= 2 and len(gen_all) >= 2:
                res["downstream types"] = measure_quality(
                    gen_all, {"rule-based (same types)": rule}, seed=s.seed, progress=progress
                )
            quality_figure(gen, refs, fig_dir / "quality_gallery.png")
            return res

        results["quality"] = parts.run("quality", quality)
        if (fig_dir / "quality_gallery.png").is_file():
            figures["quality_gallery"] = fig_dir / "quality_gallery.png"
        results["quality_md"] = "\n\n".join(
            f"**{k}**\n\n" + quality_table_md(v) for k, v in results["quality"].items()
        )

    # ---- 3. downstream
    if 3 in want or parts.has("downstream"):
        from .downstream import downstream_figure, downstream_table_md, run_downstream

        def downstream() -> dict[str, Any]:
            per = s.crops_per_lesion
            gen = _crops(
                [gen_root / t for t in s.types],
                source="generated",
                jitter=0.25,
                per=per,
                seed=s.seed,
            )
            rule = _crops(
                [rule_train], source="rule", jitter=0.25, per=per, seed=s.seed, types=s.types
            )
            test_rule = _crops(
                [rule_test], source="rule", jitter=0.25, per=1, seed=s.seed + 7, types=s.types
            )
            real_train = real_lesion_crops(
                list(s.real_train), jitter=0.25, per_lesion=4 * per, seed=s.seed
            )
            real_test = real_lesion_crops(
                list(s.real_test), jitter=0.25, per_lesion=4, seed=s.seed + 7
            )
            return run_downstream(
                generated=gen,
                rule=rule,
                real_train=real_train,
                tests={"held-out rule-based": test_rule, "real lung tumours": real_test},
                types=list(s.types),
                minutes_per_model=s.seg_minutes,
                max_steps_per_model=s.seg_max_steps,
                segmenter=s.segmenter,
                out=root / "downstream",
                seed=s.seed,
                progress=progress,
            )

        results["downstream"] = parts.run("downstream", downstream)
        downstream_figure(results["downstream"], fig_dir / "downstream.png")
        figures["downstream"] = fig_dir / "downstream.png"
        results["downstream_md"] = downstream_table_md(results["downstream"])

    # ---- 4/5 systems
    sys_root = root / "systems"
    ref_dir = Path(reference_run) if reference_run else sys_root / "text"
    if {4, 5} & want:
        parts.run(
            "train_reference",
            lambda: _system_facts(
                ref_dir
                if reference_run
                else _train_system(ref_dir, rule_dir=rule_train, s=s, progress=progress)
            ),
        )
    if 4 in want or parts.has("ablation"):
        nt_dir = Path(no_text_run) if no_text_run else sys_root / "no_text"
        parts.run(
            "train_no_text",
            lambda: _system_facts(
                nt_dir
                if no_text_run
                else _train_system(
                    nt_dir, rule_dir=rule_train, s=s, no_text=True, progress=progress
                )
            ),
        )

        def ablation() -> dict[str, Any]:
            from ..lesiondiffusion.control import measure_control
            from .downstream import score_segmenter, train_lesion_segmenter

            rows = {}
            test_rule = _crops(
                [rule_test], source="rule", jitter=0.25, per=1, seed=s.seed + 7, types=s.types
            )
            real_test = real_lesion_crops(
                list(s.real_test), jitter=0.25, per_lesion=4, seed=s.seed + 7
            )
            for label, folder in (("with text", ref_dir), ("text removed", nt_dir)):
                sysx = LesionDiffusionSystem.load(folder)
                ctrl = measure_control(sysx, n=s.n_control, seed=s.seed, steps=s.steps, null=False)
                gdir = root / "data" / f"ablation_{'text' if folder == ref_dir else 'no_text'}"
                folders = synthesize_typed_set(
                    sysx,
                    gdir,
                    types=list(s.types),
                    n_per_type=s.n_generated,
                    seed=s.seed,
                    templates=templates,
                    steps=s.steps,
                    progress=progress,
                )
                agree = _agreement(folders)
                seg_rows = {}
                for lt in s.types:
                    train = _crops(
                        [gdir / lt],
                        source="generated",
                        jitter=0.25,
                        per=s.crops_per_lesion,
                        seed=s.seed,
                    )
                    seg = train_lesion_segmenter(
                        train,
                        minutes=s.seg_minutes,
                        max_steps=s.seg_max_steps,
                        seed=s.seed,
                        run_dir=root / "ablation_seg" / f"{label.replace(' ', '_')}_{lt}",
                        resume=True,
                    )
                    tests = {"held-out rule-based": test_rule.of_type(lt)}
                    if lt == "lung_cancer":
                        tests["real lung tumours"] = real_test
                    seg_rows[lt] = {
                        name: score_segmenter(seg, t) for name, t in tests.items() if len(t)
                    }
                rows[label] = {
                    "system": _system_facts(folder),
                    "control": ctrl.to_dict(),
                    "agreement": agree,
                    "downstream": seg_rows,
                }
            return rows

        results["ablation"] = parts.run("ablation", ablation)
    if 5 in want or parts.has("generalisation"):
        ho_dir = Path(held_out_run) if held_out_run else sys_root / f"held_out_{s.held_out_type}"
        parts.run(
            "train_held_out",
            lambda: _system_facts(
                ho_dir
                if held_out_run
                else _train_system(
                    ho_dir, rule_dir=rule_train, s=s, hold_out=(s.held_out_type,), progress=progress
                )
            ),
        )

        def generalisation() -> dict[str, Any]:
            facts = _system_facts(ho_dir)
            if s.held_out_type not in facts["hold_out"]:
                raise EvalError(
                    f"held_out_run {ho_dir} was not trained with {s.held_out_type} held out "
                    f"(its manifest says {facts['hold_out']})"
                )
            rows = {}
            lt = s.held_out_type
            for label, folder in ((f"{lt} held out", ho_dir), (f"{lt} seen", ref_dir)):
                sysx = LesionDiffusionSystem.load(folder)
                gdir = root / "data" / f"general_{'held_out' if folder == ho_dir else 'seen'}"
                folders = synthesize_typed_set(
                    sysx,
                    gdir,
                    types=[lt],
                    n_per_type=s.n_held_out,
                    seed=s.seed + 11,
                    templates=templates,
                    steps=s.steps,
                    progress=progress,
                )
                rows[label] = {"system": _system_facts(folder), "agreement": _agreement(folders)}
            rdir = _rule_set(
                root / "data" / "general_rule",
                n=s.n_held_out,
                seed=s.seed + 11,
                types=[lt],
                progress=progress,
            )
            rows["rule-based synthesizer"] = {"system": None, "agreement": _agreement([rdir])}
            return {"lesion_type": lt, "rows": rows}

        results["generalisation"] = parts.run("generalisation", generalisation)

    for path in sorted(parts.root.glob("*.json")):  # parts of earlier calls count too
        parts.seconds.setdefault(path.stem, float(json.loads(path.read_text()).get("seconds", 0)))
    summary = EvalSummary(
        out=root,
        report=root / "report.md",
        parts=results,
        seconds=dict(parts.seconds),
        figures=figures,
    )
    _atomic_json(root / "results.json", {"results": results, "seconds": parts.seconds})
    from .report import write_eval_report

    write_eval_report(summary, s)
    return summary


def clean_systems(out: str | os.PathLike[str]) -> None:
    """Remove the section 4/5 systems trained inside an evaluation folder (they can be large)."""
    shutil.rmtree(Path(out) / "systems", ignore_errors=True)
