"""``bench run lesiondiffusion``: the whole system end to end, with a Markdown report.

``run_lesiondiffusion(out)`` makes ``out`` a run folder:

1. the system: the shipped demo weights copied in (or, with ``train=True``, a demo system trained
   from scratch by the model side's ``training.train_system``); ``bench_run.json`` says which, so
   ``bench synth/perf lesiondiffusion --run OUT`` load the same system;
2. a gallery: one lesion of each of the 14 LesionDiffusion types written into the bundled real
   templates (abdomen, or chest for lung and oesophagus) in the nnU-Net layout under
   ``cases/``, each drawn in three views with its report and realised measurements;
3. the text-control check (``control.measure_control``): LMNet sphericity round-like vs
   irregular, LINet lesion-minus-organ HU hypo < iso < hyper, size within 30 %, each with the
   text removed (ablation);
4. ``report.md`` with the PNGs (gallery, sphericity scatter, density bars) and ``control.json``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import report_bbox

from ..exceptions import BenchError
from ._io import atomic_json
from .pipeline import (
    RUN_INFO,
    ReportSource,
    ct_input_from_arrays,
    place_lesion,
    synthesize_lesion,
    write_case,
    write_dataset_json,
)

__all__ = ["RunError", "RunSummary", "run_lesiondiffusion"]

log = logging.getLogger(__name__)

TEMPLATES = ("abdomen", "chest")
MANIFEST = "lesiondiffusion.json"
_VIEW_FIELD_MM = 90.0


class RunError(BenchError):
    """An output folder or option ``bench run lesiondiffusion`` cannot use."""


@dataclass
class RunSummary:
    """Where everything went and how long it took."""

    out: Path
    report: Path
    weights: str
    gallery: list[Path] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    control: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def check_out(out: str | Path) -> Path:
    """``out`` must be new, empty, or a folder an earlier ``bench run lesiondiffusion`` made."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise RunError(f"--out {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not (root / RUN_INFO).is_file():
        raise RunError(
            f"--out {root} is not empty and is not a 'bench run lesiondiffusion' folder "
            f"(no {RUN_INFO}); use a new folder"
        )
    return root


def _copy_system(root: Path, src: Path | None) -> None:
    """Copy a system folder (default: the shipped demo weights) into the run folder, manifest last."""
    from .system import shipped_weights_dir

    src = shipped_weights_dir() if src is None else Path(src)
    if not (src / MANIFEST).is_file():
        raise RunError(
            f"no LesionDiffusion system to copy: {src} has no {MANIFEST} (shipped weights missing? "
            "reinstall ctsynth-bench or run with --train)"
        )
    for item in src.iterdir():
        dest = root / item.name
        if item.is_dir():
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(item, dest)
        elif item.name != MANIFEST:
            shutil.copy2(item, dest)
    shutil.copy2(src / MANIFEST, root / MANIFEST)  # the manifest last: the folder is then complete


def _template_for(lesion_type: str, inputs: dict[str, Any]) -> str | None:
    """The template holding most of the lesion type's organ (the chest for lung, not the lung bases)."""
    organ = report_bbox.LESION_TYPES[lesion_type].organ
    ids = np.asarray(report_bbox.organ_ids(organ))
    counts = {name: int(np.isin(inp.organs, ids).sum()) for name, inp in inputs.items()}
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] >= 50 else None


def _caption(report: report_bbox.Report, measured: dict[str, Any]) -> str:
    ext = "x".join(f"{v:.0f}" for v in measured.get("extent_mm", []))
    parts = [
        f"{report.lesion_type}: {report.shape}, {report.density}, {report.density_variations}, "
        f"{report.surface_characteristics}, {report.lesion_location}, requested {report.size_text()}",
        f"realised {ext} mm, {measured.get('volume_ml', float('nan')):.2f} ml",
    ]
    if measured.get("sphericity") is not None:
        parts.append(f"sphericity {measured['sphericity']:.2f}")
    if measured.get("delta_hu") is not None:
        parts.append(f"lesion - organ {measured['delta_hu']:+.0f} HU")
    return "; ".join(parts)


def _zoom(
    ct: np.ndarray, lesion: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(lesion)
    c = idx.mean(0)
    half = np.ceil(_VIEW_FIELD_MM / 2 / np.asarray(spacing)).astype(int)
    lo = np.maximum(np.round(c).astype(int) - half, 0)
    hi = np.minimum(np.round(c).astype(int) + half + 1, ct.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return ct[sl], lesion[sl]


def make_gallery(
    system: Any, root: Path, *, seed: int = 0, steps: int | None = None, progress: bool = False
) -> tuple[list[Path], dict[str, str]]:
    """One lesion per type into the bundled templates: cases in ``root/cases``, PNGs in ``root/figures``."""
    import torch
    from tqdm.auto import tqdm

    from ..data import load_case
    from ..viz import WINDOWS, render_views
    from .pipeline import apply_result, case_seeds, system_info

    inputs = {}
    for name in TEMPLATES:
        case = load_case(name)
        inputs[name] = ct_input_from_arrays(
            np.asarray(case.ct), np.asarray(case.organs), case.affine, name=name
        )
    pngs: list[Path] = []
    failed: dict[str, str] = {}
    cases = root / "cases"
    for i, lesion_type in enumerate(
        tqdm(list(report_bbox.LESION_TYPES), desc="gallery", disable=not progress)
    ):
        template = _template_for(lesion_type, inputs)
        if template is None:
            failed[lesion_type] = "no bundled template has its organ"
            continue
        inp = inputs[template]
        rng, torch_seed = case_seeds(seed, i)
        try:
            report, box = place_lesion(ReportSource(lesion_type=lesion_type), inp, rng)
            res = synthesize_lesion(
                system,
                inp,
                report,
                box,
                generator=torch.Generator().manual_seed(torch_seed),
                steps=steps,
            )
        except ValueError as exc:  # a report that does not fit, an empty mask ...
            failed[lesion_type] = str(exc).splitlines()[0]
            log.warning("gallery: %s failed: %s", lesion_type, exc)
            continue
        meta = {
            "system": system_info(system),
            "seeds": {"seed": seed, "case_index": i, "torch": torch_seed},
        }
        side = write_case(cases, lesion_type, inp, res, meta)
        ct, lesion, _ = apply_result(inp, res)
        sp = inp.spacing
        zct, zles = _zoom(inp.ras(ct).astype(np.float32), inp.ras(lesion), sp)
        window = WINDOWS["lung"] if report.organ.startswith("lung") else WINDOWS["soft_tissue"]
        if report.density == "hyperdense" and report.specific_features == "stone":
            window = WINDOWS["bone"]
        pngs.append(
            render_views(
                zct,
                label=zles,
                spacing=sp,
                window=window,
                title=f"{lesion_type} ({template})",
                caption=_caption(report, side["measured"]),
                out=root / "figures" / f"{lesion_type}.png",
            )
        )
    write_dataset_json(cases)
    return pngs, failed


def _montage(pngs: list[Path], out: Path, *, columns: int = 2) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    rows = max(1, -(-len(pngs) // columns))
    fig = Figure(figsize=(12 * columns / 1.6, 5.2 * rows / 1.6))
    FigureCanvasAgg(fig)
    for k in range(rows * columns):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.axis("off")
        if k < len(pngs):
            ax.imshow(imread(str(pngs[k])))
    fig.subplots_adjust(left=0, right=1, top=1, bottom=0, wspace=0.01, hspace=0.01)
    fig.savefig(out, dpi=110)
    return out


def _sphericity_pairs(control: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-box sphericities (round-like, irregular) of the headline threshold, from ``per_case``."""
    per = control.get("per_case", {})
    if per.get("sphericity_round"):
        return np.asarray(per["sphericity_round"]), np.asarray(per["sphericity_irregular"])
    for v in per.get(
        "threshold_variants", {}
    ).values():  # the variant the headline numbers come from
        if v.get("per_round") and np.isclose(
            v.get("sphericity_round"), control.get("sphericity_round")
        ):
            return np.asarray(v["per_round"]), np.asarray(v["per_irregular"])
    return None


def control_figures(control: dict[str, Any], root: Path) -> dict[str, Path]:
    """Sphericity scatter (round-like vs irregular, same noise) and density bars (text vs no text)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figs: dict[str, Path] = {}
    per = control.get("per_case", {})
    root.mkdir(parents=True, exist_ok=True)
    pairs = _sphericity_pairs(control)
    if pairs is not None:
        fig = Figure(figsize=(4.6, 4.4))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        r, i = pairs
        ax.scatter(r, i, s=14, c="#1f77b4")
        lo, hi = float(min(r.min(), i.min())) - 0.02, float(max(r.max(), i.max())) + 0.02
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel('sphericity, "round-like"')
        ax.set_ylabel('sphericity, "irregular"')
        ax.set_title(
            f"LMNet, same noise (n={len(r)}): {100 * float((r > i).mean()):.0f}% below the line",
            fontsize=9,
        )
        fig.tight_layout()
        figs["sphericity"] = root / "sphericity.png"
        fig.savefig(figs["sphericity"], dpi=110)
    if control.get("delta_hu"):
        fig = Figure(figsize=(5.4, 4.0))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        names = list(control["delta_hu"])
        x = np.arange(len(names))
        for off, key, label, color in (
            (-0.2, "delta_hu", "with text", "#d62728"),
            (0.2, "null_delta_hu", "text removed", "#7f7f7f"),
        ):
            means = [control[key][k] for k in names]
            errs = [float(np.std(per.get(key, {}).get(k, [0.0]))) for k in names]
            ax.bar(x + off, means, width=0.38, yerr=errs, label=label, color=color, capsize=3)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, names)
        ax.set_ylabel("lesion - organ HU")
        ax.set_title("LINet density prompts (mean, std over held-out boxes)", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        figs["density"] = root / "density.png"
        fig.savefig(figs["density"], dpi=110)
    return figs


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def write_report_md(s: RunSummary, system_ident: dict[str, Any]) -> Path:
    """``report.md`` of a run (relative links to the PNGs)."""
    c = s.control
    lines = [
        "# LesionDiffusion run",
        "",
        f"System: **{s.weights}** (preset `{system_ident['preset']}`, text encoder "
        f"`{system_ident['text_encoder']}`); run folder `{s.out}`.",
        "",
        "Timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in s.seconds.items()) + ".",
        "",
    ]
    if s.train:
        stages = s.train.get("stages", {})
        done = ", ".join(
            f"{k} {v.get('steps', '?')} steps" if isinstance(v, dict) else k
            for k, v in stages.items()
        )
        lines += [
            f"Trained from scratch here on {s.train.get('crops', '?')} training crops: {done}; "
            f"{s.seconds.get('train', float('nan')) / 60:.1f} min in all.",
            "",
        ]
    if c:
        pf = c["pair_fractions"]
        npf = c["null_pair_fractions"]
        lines += [
            "## Does it follow its report?",
            "",
            f"Held-out boxes, same noise across prompts; {c['steps']} DDIM steps, guidance LMNet "
            f"{c['guidance_lmnet']:g}, LINet {c['guidance_linet']:g}.",
            "",
            "| check | goal | with text | text removed (ablation) | result |",
            "|---|---|---|---|---|",
            f"| LMNet sphericity round-like > irregular (n={c['n_shape']} pairs) | p < 0.01 | "
            f"{c['sphericity_round']:.3f} vs {c['sphericity_irregular']:.3f}, gap {c['sphericity_gap']:+.3f}, "
            f"p = {c['shape_p']:.2g}, {100 * c['shape_pairs_right']:.0f}% of pairs | gap "
            f"{c['null_sphericity_gap']:+.3f}, p = {c['null_shape_p']:.2g} | {_mark(c['shape_passes'])} |",
            f"| LINet hypo < iso < hyper (n={c['n_density']}) | >= 90% of pairs | "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in pf.items())
            + " | "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in npf.items())
            + f" | {_mark(c['density_passes'])} |",
            "| lesion - organ HU | ordered | "
            + ", ".join(f"{k} {v:+.1f}" for k, v in c["delta_hu"].items())
            + " | "
            + ", ".join(f"{k} {v:+.1f}" for k, v in c["null_delta_hu"].items())
            + " | |",
            f"| size within 30% of the request | >= 80% | {100 * c['size_within_30']:.0f}% | | "
            f"{_mark(c['size_passes'])} |",
            f"| ablation: gaps disappear without text | null p >= 0.01, no order >= 90% | | | "
            f"{_mark(c['ablation_holds'])} |",
            "",
        ]
        for key, title in (
            ("sphericity", "Sphericity, round-like vs irregular"),
            ("density", "Density prompts"),
        ):
            if key in s.figures:
                lines += [f"![{title}]({s.figures[key].relative_to(s.out)})", ""]
    else:
        lines += ["## Does it follow its report?", "", "The text-control check did not run.", ""]
    lines += [
        "## Gallery: the 14 lesion types in real CT",
        "",
        f"Cases (nnU-Net layout, with report sidecars): `{(s.out / 'cases').relative_to(s.out)}/`.",
        "",
    ]
    if "gallery" in s.figures:
        lines += [f"![gallery]({s.figures['gallery'].relative_to(s.out)})", ""]
    for png in s.gallery:
        lines.append(f"- [{png.stem}]({png.relative_to(s.out)})")
    for name, why in s.failed.items():
        lines.append(f"- {name}: not made ({why})")
    lines += [
        "",
        "Use this folder as a system: `bench synth lesiondiffusion --run "
        f"{s.out} ...`, `bench perf lesiondiffusion --run {s.out}`.",
        "",
    ]
    path = s.out / "report.md"
    from ._io import atomic_bytes

    atomic_bytes(path, "\n".join(lines).encode())
    return path


#: Default training budget of ``--train``: minutes of LMNet and LINet, which train at the same time
#: (two processes) when the machine has two cores.
TRAIN_MINUTES = 12.0


def run_lesiondiffusion(
    out: str | Path,
    *,
    train: bool = False,
    train_minutes: float | None = None,
    n_control: int = 30,
    seed: int = 0,
    steps: int | None = None,
    system_from: str | Path | None = None,
    progress: bool = False,
) -> RunSummary:
    """Run LesionDiffusion end to end into ``out`` (see the module docstring).

    Args:
        out: the run folder (new, empty, or an earlier run's).
        train: train the demo system from scratch (``train_minutes`` per stage, default
            :data:`TRAIN_MINUTES`) instead of copying the shipped weights.
        n_control: held-out boxes per control check.
        seed: seed of the gallery and the control boxes.
        steps: DDIM steps (default: the preset's).
        system_from: copy this system folder instead of the shipped weights (e.g. another run).
        progress: progress bars.

    Raises:
        RunError: ``out`` is a non-empty folder of something else, or the shipped weights are missing.
    """
    import torch

    from .pipeline import system_info
    from .system import LesionDiffusionSystem

    if n_control < 1:
        raise RunError(f"n_control must be >= 1, got {n_control}")
    root = check_out(out)
    root.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    train_report: dict[str, Any] = {}
    t0 = time.perf_counter()
    if train:
        from .presets import get_preset
        from .training import train_system

        weights = "trained here (bench run --train)"
        preset = get_preset("demo")
        minutes = TRAIN_MINUTES if train_minutes is None else float(train_minutes)
        stages = ("vqgan", "lmnet", "linet") if preset.codec == "vqgan" else ("lmnet", "linet")
        atomic_json(
            root / RUN_INFO, {"system": "lesiondiffusion", "weights": weights, "state": "training"}
        )
        train_report = train_system(
            preset=preset,
            out=root,
            data_dir=None,
            stages=stages,
            minutes=minutes,
            seed=seed,
            progress=progress,
            parallel=(os.cpu_count() or 1) >= 2,
        )
        seconds["train"] = time.perf_counter() - t0
        atomic_json(
            root / RUN_INFO,
            {
                "system": "lesiondiffusion",
                "weights": weights,
                "train": train_report,
                "train_seconds": seconds["train"],
            },
        )
    else:
        weights = "shipped demo (copied)" if system_from is None else f"copied from {system_from}"
        atomic_json(
            root / RUN_INFO, {"system": "lesiondiffusion", "weights": weights, "state": "copying"}
        )
        _copy_system(root, None if system_from is None else Path(system_from))
        atomic_json(root / RUN_INFO, {"system": "lesiondiffusion", "weights": weights})
    system = LesionDiffusionSystem.load(root)
    ident = system_info(system)
    t0 = time.perf_counter()
    pngs, failed = make_gallery(system, root, seed=seed, steps=steps, progress=progress)
    figures: dict[str, Path] = {}
    if pngs:
        figures["gallery"] = _montage(pngs, root / "figures" / "gallery.png")
    seconds["gallery"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from .control import measure_control

    with torch.no_grad():
        result = measure_control(system, n=n_control, seed=seed, steps=steps)
    control = result.to_dict()
    atomic_json(root / "control.json", control)
    figures.update(control_figures(control, root / "figures"))
    seconds["control"] = time.perf_counter() - t0
    summary = RunSummary(
        out=root,
        report=root / "report.md",
        weights=weights,
        gallery=pngs,
        figures=figures,
        control=control,
        seconds=seconds,
        failed=failed,
        train=train_report,
    )
    write_report_md(summary, ident)
    return summary
