"""Text -> torso -> lesion: a GuideGen torso from a prompt, a LesionDiffusion lesion inpainted into it.

``bench synth text2lesion`` composes the two systems (beyond both papers):

1. GuideGen makes the torso from the clinical prompt: label map (GuideGen ids 0-20, its tumour 20)
   and CT, chunk-seeded as ``bench synth guidegen`` seeds them.
2. The torso is put on the working grid (:data:`DEFAULT_SPACING_MM`, centred like GuideGen's grid,
   same field of view): CT by linear interpolation, rounded to whole HU; label map by linear
   interpolation of each class's indicator, then the most likely class (smooth organ boundaries
   instead of 24 mm steps).
3. The label map becomes the TotalSegmentator v2 organ map LesionDiffusion reads
   (:func:`organs_for_lesiondiffusion`): one id per organ, kidneys and adrenals split left/right at
   the midline, the lung split by side and height into lobes (as the derived chest labels are),
   GuideGen's tumour voxels given to the organ around them.
4. LesionDiffusion's own pipeline places the report's box in that map (never on GuideGen's
   tumour), draws LMNet's mask, inpaints with LINet and pastes it back. LMNet's mask is cut to the
   report's organ on the model grid (:class:`InsideOrgan`), and the lesion mask on the CT grid to
   the organ minus GuideGen's tumour, so the lesion lies inside the organ the report names.
5. Outputs share one grid (shape and affine): the CT with the lesion, the CT before it, the
   combined label map (GuideGen ids 0-20, lesion :data:`LESION_ID` = 21 over them), the lesion mask,
   the TotalSegmentator map used, a sidecar with both texts, and a PNG preview.

With a real CT and organ map instead of a prompt (:func:`lesion_in_ct`) it is plain
LesionDiffusion: the same calls and seeds as ``bench synth lesiondiffusion`` (the CT and lesion
equal its case of the same index), written in this module's layout.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import report_bbox
from scipy import ndimage

from .data import GUIDEGEN_CLASSES, GUIDEGEN_TUMOUR, to_guidegen
from .lesiondiffusion.pipeline import (
    CTInput,
    LesionSystem,
    ReportSource,
    SynthesisError,
    apply_result,
    case_seeds,
    ct_input_from_arrays,
    place_lesion,
    realised_measurements,
    synthesize_lesion,
    system_info,
)

__all__ = [
    "DEFAULT_SPACING_MM",
    "LABELS",
    "LESION_ID",
    "MAX_N",
    "InsideOrgan",
    "T2LCase",
    "Text2LesionError",
    "default_lesion_type",
    "lesion_in_ct",
    "organs_for_lesiondiffusion",
    "resolve_run",
    "text2lesion",
    "to_working_grid",
    "write_cases",
]

log = logging.getLogger(__name__)

#: Id of the LesionDiffusion lesion in the combined label map (over GuideGen's 0-20).
LESION_ID = 21
#: Names and ids of the combined label map (``dataset.json``'s ``labels``).
LABELS: dict[str, int] = {
    **{name: i for i, name in GUIDEGEN_CLASSES.items()},
    "lesion": LESION_ID,
}
#: Working-grid spacing (mm) of the torso when none is given: the demo CT's 12 mm voxels would
#: make a 30 mm lesion two or three voxels wide.
DEFAULT_SPACING_MM = 3.0
#: Most cases per call: every case is made in memory and written at the end (nothing on error).
MAX_N = 32
#: Folders ``bench run guidegen`` and ``bench run lesiondiffusion`` write by default.
DEFAULT_RUNS: dict[str, str] = {
    "guidegen": "guidegen_run",
    "lesiondiffusion": "lesiondiffusion_run",
}
_MANIFESTS = {"guidegen": "guidegen.json", "lesiondiffusion": "lesiondiffusion.json"}
#: The lesion type made when neither a report nor a lesion type is given: the prompt site's cancer.
SITE_LESION_TYPE: dict[str, str] = {
    "liver": "liver_cancer",
    "kidney": "kidney_cancer",
    "stomach": "stomach_cancer",
    "lung": "lung_cancer",
}


class Text2LesionError(SynthesisError):
    """Bad input to text2lesion (options, runs, a lesion whose organ the torso lacks)."""


# --------------------------------------------------------------------------- runs and defaults


def resolve_run(system: str, given: str | os.PathLike[str] | None) -> Path | None:
    """The run folder of ``system`` to load; ``None`` means the shipped demo weights.

    ``given`` is a folder, ``"shipped"``, or ``None``: then ``./guidegen_run`` /
    ``./lesiondiffusion_run`` (what ``bench run`` writes by default) when it holds the system's
    manifest, else the shipped weights.

    Raises:
        Text2LesionError: a given folder that does not exist or holds no such system.
    """
    if given is not None and str(given) == "shipped":
        return None
    manifest = _MANIFESTS[system]
    if given is None:
        folder = Path(DEFAULT_RUNS[system])
        return folder if (folder / manifest).is_file() else None
    folder = Path(given)
    if not folder.is_dir():
        raise Text2LesionError(
            f"--run-{system} {folder} does not exist; give a run folder of 'bench run {system}' "
            f"or 'bench train {system}', or 'shipped' for the demo weights"
        )
    if not (folder / manifest).is_file():
        raise Text2LesionError(
            f"--run-{system} {folder} is not a {system} run folder (no {manifest}); give one made by "
            f"'bench run {system}' or 'bench train {system}', or 'shipped'"
        )
    return folder


def default_lesion_type(site: str) -> str:
    """The lesion type made for a prompt's tumour site when none is asked for.

    Raises:
        Text2LesionError: a site with no LesionDiffusion lesion type (the spleen).
    """
    if site not in SITE_LESION_TYPE:
        types = ", ".join(sorted(report_bbox.LESION_TYPES))
        raise Text2LesionError(
            f"the prompt's site {site!r} has no LesionDiffusion lesion type; give --lesion-type "
            f"(one of {types}) or --report"
        )
    return SITE_LESION_TYPE[site]


# ------------------------------------------------------------------------------- torso grid


def _grid_affine(n: Sequence[int], spacing: float, centre: np.ndarray) -> np.ndarray:
    a = np.diag([spacing, spacing, spacing, 1.0])
    a[:3, 3] = centre - spacing * (np.asarray(n, dtype=np.float64) - 1) / 2.0
    return a


def _resample(
    volume: np.ndarray, src: np.ndarray, dst: np.ndarray, shape: Sequence[int], *, order: int
) -> np.ndarray:
    """``volume`` on grid ``src`` (diagonal RAS affine) sampled at the voxels of grid ``dst``."""
    scale = np.diag(dst)[:3] / np.diag(src)[:3]
    offset = (dst[:3, 3] - src[:3, 3]) / np.diag(src)[:3]
    return ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32),
        scale,
        offset=offset,
        output_shape=tuple(int(s) for s in shape),
        order=order,
        mode="nearest",
        prefilter=False,
    )


def to_working_grid(
    ct: np.ndarray,
    ct_affine: np.ndarray,
    labels: np.ndarray,
    label_affine: np.ndarray,
    spacing: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GuideGen's CT and label map on one isotropic grid of ``spacing`` mm (same centre and field of view).

    Args:
        ct: float HU ``(C, C, C)`` on the CT grid (diagonal RAS affine ``ct_affine``).
        labels: GuideGen ids ``(S, S, S)`` on the label grid (``label_affine``).
        spacing: working voxel size in mm.

    Returns:
        ``(ct, labels, affine)``: float32 whole HU, uint8 GuideGen ids, the 4x4 RAS affine.
    """
    for name, a in (("CT", ct_affine), ("label", label_affine)):
        if not np.allclose(a[:3, :3], np.diag(np.diag(a)[:3])) or np.any(np.diag(a)[:3] <= 0):
            raise Text2LesionError(f"the torso's {name} grid is not axis-aligned RAS: {a.tolist()}")
    fov = np.asarray(ct.shape) * np.diag(ct_affine)[:3]
    n = np.maximum(1, np.rint(fov / spacing)).astype(int)
    centre = ct_affine[:3, 3] + np.diag(ct_affine)[:3] * (np.asarray(ct.shape) - 1) / 2.0
    dst = _grid_affine(n, spacing, centre)
    ct_w = np.rint(_resample(ct, ct_affine, dst, n, order=1)).astype(np.float32)
    best = np.full(tuple(n), -1.0, dtype=np.float32)
    lab_w = np.zeros(tuple(n), dtype=np.uint8)
    for c in np.unique(labels):  # linear interpolation of each indicator, most likely class
        p = _resample(labels == c, label_affine, dst, n, order=1)
        win = p > best
        lab_w[win] = int(c)
        best[win] = p[win]
    return ct_w, lab_w, dst


# --------------------------------------------------------------------- GuideGen -> TotalSegmentator

_TS_ID = {name: i for i, name in report_bbox.TOTALSEG_V2.items()}
#: GuideGen class -> the TotalSegmentator v2 class it becomes (one per organ; sided classes and the
#: lung are split by :func:`organs_for_lesiondiffusion`). Vertebrae and ribs are one class each in
#: GuideGen; they get one representative id (no lesion type is placed in them).
_GG_TO_TS: dict[int, str] = {
    1: "spleen",
    3: "liver",
    4: "stomach",
    5: "pancreas",
    7: "small_bowel",
    8: "duodenum",
    9: "colon",
    10: "urinary_bladder",
    11: "heart",
    12: "vertebrae_L1",
    15: "portal_vein_and_splenic_vein",
    16: "esophagus",
    17: "aorta",
    18: "inferior_vena_cava",
    19: "gallbladder",
}
#: GuideGen classes split at the midline: (patient's left, patient's right) TotalSegmentator names.
_SIDED: dict[int, tuple[str, str]] = {
    2: ("kidney_left", "kidney_right"),
    13: ("rib_left_8", "rib_right_8"),
    14: ("adrenal_gland_left", "adrenal_gland_right"),
}
_LUNG = 6
#: Lobes top to bottom: left lung in halves, right lung in thirds (as ``derive_chest_labels``).
_LOBES = {
    "left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
}


def _midline_x(labels: np.ndarray) -> float:
    """RAS x voxel coordinate of the midline: the vertebrae's centre, else the body's."""
    for sel in (labels == 12, labels > 0):
        xs = np.nonzero(sel.any(axis=(1, 2)))[0]
        if xs.size:
            w = sel.sum(axis=(1, 2))
            return float((np.arange(labels.shape[0]) * w).sum() / w.sum())
    return (labels.shape[0] - 1) / 2.0


def organs_for_lesiondiffusion(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GuideGen ids (RAS voxel order) -> the TotalSegmentator v2 map LesionDiffusion reads.

    RAS ``+x`` is the patient's right, so voxels right of the midline get the ``_right`` classes.
    GuideGen's tumour voxels take the organ of the nearest organ voxel.

    Returns:
        ``(organs, tumour)``: uint8 TotalSegmentator v2 ids, bool mask of GuideGen's tumour.
    """
    from .data._lungs import _split_by_height

    labels = np.asarray(labels)
    tumour = labels == GUIDEGEN_TUMOUR
    filled = labels.copy()
    if tumour.any() and (~tumour & (labels > 0)).any():
        _, idx = ndimage.distance_transform_edt(tumour | (labels == 0), return_indices=True)
        filled[tumour] = labels[tuple(i[tumour] for i in idx)]
    out = np.zeros(labels.shape, dtype=np.uint8)
    for gid, name in _GG_TO_TS.items():
        out[filled == gid] = _TS_ID[name]
    right = (np.arange(labels.shape[0]) > _midline_x(filled))[:, None, None]
    for gid, (left_name, right_name) in _SIDED.items():
        sel = filled == gid
        out[sel & ~right] = _TS_ID[left_name]
        out[sel & right] = _TS_ID[right_name]
    lung = filled == _LUNG
    for side, on_side in (("left", ~right), ("right", right)):
        _split_by_height(lung & on_side, tuple(_TS_ID[n] for n in _LOBES[side]), out)
    return out, tumour


# ------------------------------------------------------------------------------ lesion system


class InsideOrgan:
    """A :class:`LesionSystem` whose lesion masks stay inside the target organ.

    LMNet's mask is cut to ``target_organ`` on the model grid (where it is non-empty there); the
    torso's organs are smoothed 24 mm voxels, so a lesion crossing their boundary would cross a
    line the label map cannot draw. Everything else is the wrapped system's.
    """

    def __init__(self, system: LesionSystem) -> None:
        self._system = system

    def __getattr__(self, name: str) -> Any:
        return getattr(self._system, name)

    def sample_mask(self, *, target_organ: Any, **kwargs: Any) -> Any:
        m = self._system.sample_mask(target_organ=target_organ, **kwargs)
        inside = (m > 0) & target_organ.to(m.device).bool()
        return inside.to(m.dtype) if bool(inside.any()) else m

    def inpaint(self, **kwargs: Any) -> Any:
        return self._system.inpaint(**kwargs)


# ------------------------------------------------------------------------------------- cases


@dataclass
class T2LCase:
    """One finished case, in memory until :func:`write_cases`.

    Arrays share one grid (``affine``; the input's voxel order). ``labels`` holds GuideGen ids with
    the lesion as :data:`LESION_ID`; ``organs`` the TotalSegmentator v2 map LesionDiffusion used;
    ``torso`` the CT before the lesion (``None`` for a user's CT).
    """

    name: str
    ct: np.ndarray
    labels: np.ndarray
    lesion: np.ndarray
    organs: np.ndarray
    torso: np.ndarray | None
    affine: np.ndarray
    header: Any
    meta: dict[str, Any] = field(default_factory=dict)
    preview_ras: tuple[np.ndarray, ...] = ()
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


def _check_organ_in_torso(
    organ: str, organs_place: np.ndarray, labels: np.ndarray, what: str
) -> None:
    ids = np.asarray(report_bbox.organ_ids(organ))
    if int(np.isin(organs_place, ids).sum()) >= 8:
        return
    held = [GUIDEGEN_CLASSES[int(v)] for v in np.unique(labels) if 0 < int(v) < GUIDEGEN_TUMOUR]
    raise Text2LesionError(
        f"the report's organ {organ!r} is not in {what} (it holds: {', '.join(held) or 'nothing'}); "
        "choose a lesion type of one of those organs, or another --prompt or --seed"
    )


def _lesion_case(
    system: LesionSystem,
    inp: CTInput,
    place_inp: CTInput,
    source: ReportSource,
    index: int,
    *,
    seed: int,
    steps: int | None,
    guidance: float | None,
    keep_out: np.ndarray | None,
    inside: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """LesionDiffusion's pipeline on one CT; returns ``(ct, lesion, organs, sidecar part)``."""
    import torch

    rng, torch_seed = case_seeds(seed, index)
    t0 = time.perf_counter()
    report, box = place_lesion(source, place_inp, rng)
    gen = torch.Generator(device="cpu").manual_seed(torch_seed)
    runner = InsideOrgan(system) if inside else system
    result = synthesize_lesion(
        runner, inp, report, box, generator=gen, steps=steps, guidance=guidance
    )
    ct, lesion, organs = apply_result(inp, result)
    if inside:  # on the CT grid too: inside the organ, never over GuideGen's tumour
        organ_mask = np.isin(inp.organs, np.asarray(report_bbox.organ_ids(report.organ)))
        if keep_out is not None:
            organ_mask &= ~keep_out
        lesion &= organ_mask.astype(np.uint8)
        if not lesion.any():
            raise Text2LesionError(
                f"the lesion of case {index} fell outside the {report.organ}; try another --seed"
            )
        organs = inp.organs.astype(np.uint8)
    meta = {
        "lesion_type": report.lesion_type,
        "report_text": report.text(),
        "report": report.to_dict(),
        "box": {**box.to_dict(), "axes": "RAS voxel indices"},
        "lesion_voxels": int(lesion.sum()),
        "measured": realised_measurements(inp, ct, lesion, organs, report),
        "model_spacing_mm": result.model_spacing_mm,
        "seeds_lesiondiffusion": {
            "seed": int(seed),
            "case_index": index,
            "numpy": [int(seed), index],
            "torch": torch_seed,
        },
        "steps": steps if steps is not None else int(system.preset.steps),
        "guidance": guidance if guidance is not None else float(system.preset.guidance),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return ct, lesion, organs, meta


def _geometry(affine: np.ndarray, shape: Sequence[int]) -> dict[str, Any]:
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return {
        "shape": [int(s) for s in shape],
        "spacing_mm": [round(float(z), 4) for z in zooms],
        "affine": np.round(np.asarray(affine, dtype=np.float64), 4).tolist(),
    }


def text2lesion(
    gg_system: Any,
    ld_system: LesionSystem,
    prompt: str,
    source: ReportSource,
    *,
    n: int = 1,
    seed: int = 0,
    spacing: float = DEFAULT_SPACING_MM,
    steps: int | None = None,
    guidance: float | None = None,
    gg_steps: int | None = None,
) -> list[T2LCase]:
    """Make ``n`` torsos from ``prompt`` with GuideGen and inpaint ``source``'s lesion into each.

    Torso chunk ``c`` (``guidegen.pipeline.CHUNK`` cases) draws from ``seed * 100003 + c`` as
    ``bench synth guidegen`` does; lesion ``i`` from ``case_seeds(seed, i)`` as ``bench synth
    lesiondiffusion`` does. Nothing is written.

    Raises:
        Text2LesionError / SynthesisError: the report's organ missing from a torso, a report that
            cannot fit, or an empty lesion.
    """
    import torch

    from .guidegen.pipeline import CHUNK, encode, generate
    from .guidegen.prompts import parse_prompt
    from .text import load_text_encoder

    fields = parse_prompt(prompt)
    encoder = load_text_encoder(gg_system.text_encoder)
    torsos: list[tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]] = []
    for c, start in enumerate(range(0, n, CHUNK)):
        k = min(CHUNK, n - start)
        chunk_seed = seed * 100003 + c
        tokens, mask = encode(gg_system, [prompt] * k, k, encoder)
        res = generate(
            gg_system,
            tokens,
            mask,
            generator=torch.Generator().manual_seed(chunk_seed),
            counts=[fields.count] * k,
            ct_steps=gg_steps,
        )
        if res.ct is None:
            raise Text2LesionError(
                f"GuideGen run {gg_system.path} has no CT stages (autoencoder/, generator/); "
                "train them or use the shipped weights"
            )
        for b in range(k):
            ct, lab, aff = to_working_grid(
                res.ct[b].numpy(), res.ct_affine, res.labels[b].numpy(), res.label_affine, spacing
            )
            torsos.append(
                (ct, lab, aff, {"chunk": c, "chunk_seed": chunk_seed, "index_in_chunk": b})
            )
    organ = source.organ_name()
    cases = []
    for i, (ct, lab, aff, gg_seed) in enumerate(torsos):
        name = f"t2l_{i:05d}"
        organs, tumour = organs_for_lesiondiffusion(lab)
        place = organs.copy()
        place[tumour] = 0  # the box never lands on GuideGen's tumour
        what = f"the generated torso {name}"
        if organ is not None:
            _check_organ_in_torso(organ, place, lab, what)
        inp = ct_input_from_arrays(ct, organs, aff, name=name)
        place_inp = ct_input_from_arrays(ct, place, aff, name=what)
        ct_out, lesion, organs_out, meta = _lesion_case(
            ld_system,
            inp,
            place_inp,
            source,
            i,
            seed=seed,
            steps=steps,
            guidance=guidance,
            keep_out=tumour,
            inside=True,
        )
        labels = lab.copy()
        labels[lesion > 0] = LESION_ID
        meta = {
            "case": name,
            "mode": "text2lesion",
            "prompt": prompt,
            "prompt_fields": fields.to_dict(),
            **meta,
            "seeds_guidegen": {"seed": int(seed), **gg_seed},
            "guidegen": {
                "run": str(gg_system.path),
                "tcss_guidance": gg_system.preset.guidance,
                "ct_steps": gg_steps or gg_system.preset.gen_steps,
                "native_ct_spacing_mm": float(res.ct_affine[0, 0]),
                "native_label_spacing_mm": float(res.label_affine[0, 0]),
            },
            "lesiondiffusion": system_info(ld_system),
            "geometry": _geometry(aff, ct.shape),
        }
        cases.append(
            T2LCase(
                name=name,
                ct=ct_out,
                labels=labels,
                lesion=lesion,
                organs=organs_out,
                torso=ct.astype(np.int16),
                affine=aff,
                header=None,
                meta=meta,
                spacing=inp.spacing,
            )
        )
    return cases


def lesion_in_ct(
    ld_system: LesionSystem,
    inp: CTInput,
    source: ReportSource,
    *,
    n: int = 1,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
) -> list[T2LCase]:
    """Plain LesionDiffusion on a user's CT and TotalSegmentator v2 map (``--ct --organs``).

    Case ``i`` is ``bench synth lesiondiffusion``'s case ``i`` (same seeds, same calls). The label
    map is the organ map in GuideGen ids (``data.to_guidegen``) with the lesion as :data:`LESION_ID`.
    """
    cases = []
    for i in range(n):
        name = f"t2l_{i:05d}"
        ct, lesion, organs, meta = _lesion_case(
            ld_system,
            inp,
            inp,
            source,
            i,
            seed=seed,
            steps=steps,
            guidance=guidance,
            keep_out=None,
            inside=False,
        )
        labels = to_guidegen(organs.astype(np.int64))
        labels[lesion > 0] = LESION_ID
        meta = {
            "case": name,
            "mode": "lesiondiffusion",
            "prompt": None,
            "ct": inp.name,
            **meta,
            "lesiondiffusion": system_info(ld_system),
            "geometry": _geometry(inp.affine, inp.ct.shape),
        }
        cases.append(
            T2LCase(
                name=name,
                ct=ct,
                labels=labels,
                lesion=lesion,
                organs=organs,
                torso=None,
                affine=inp.affine,
                header=inp.header,
                meta=meta,
                preview_ras=(inp.ras(inp.ct),),
                spacing=inp.spacing,
            )
        )
    return cases


# ----------------------------------------------------------------------------------- writing


def _preview(case: T2LCase, ras: Any, out: Path) -> None:
    """Before / after rows (axial, coronal, sagittal through the lesion) with outlines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .viz._views import _centre, _save_png_atomically

    before = ras(case.torso) if case.torso is not None else case.preview_ras[0]
    after, labels, lesion = ras(case.ct), ras(case.labels), ras(case.lesion) > 0
    cx, cy, cz = _centre(lesion, lesion.shape)
    ts_ids = np.asarray(report_bbox.organ_ids(case.meta["report"]["organ"]))
    organ_ids = np.unique(to_guidegen(ts_ids))
    sx, sy, sz = case.spacing

    def cut(v: np.ndarray) -> list[tuple[str, np.ndarray, float]]:
        return [
            (f"axial z={cz}", v[:, :, cz].T[:, ::-1], sy / sx),
            (f"coronal y={cy}", v[:, cy, :].T[:, ::-1], sz / sx),
            (f"sagittal x={cx}", v[cx, :, :].T, sz / sy),
        ]

    fig = Figure(figsize=(11, 8.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    outlines = [
        (cut(np.isin(labels, organ_ids) | lesion), "#40c0ff", ("before", "after")),
        (cut(labels == GUIDEGEN_TUMOUR), "#ffd000", ("after",)),
        (cut(lesion), "#ff3030", ("after",)),
    ]
    for r, (row, vol) in enumerate((("before", before), ("after", after))):
        for v, (ax, (title, img, aspect)) in enumerate(zip(axes[r], cut(vol), strict=True)):
            ax.imshow(
                img,
                cmap="gray",
                vmin=-160,
                vmax=240,
                origin="lower",
                aspect=aspect,
                interpolation="nearest",
            )
            for views, colour, rows in outlines:
                mask = views[v][1]
                if row in rows and mask.any():
                    ax.contour(
                        mask.astype(float),
                        levels=[0.5],
                        colors=[colour],
                        linewidths=0.8,
                        origin="lower",
                    )
            ax.set_title(f"{row}: {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].text(0.01, 0.01, "R", color="yellow", transform=axes[0][0].transAxes, fontsize=9)
    prompt = case.meta.get("prompt")
    text = (f"prompt: {prompt}\n" if prompt else "") + f"report: {case.meta['report_text']}"
    import textwrap

    fig.text(0.5, 0.01, textwrap.fill(text, 170), ha="center", va="bottom", fontsize=7)
    fig.suptitle(
        f"{case.name}: the report's organ (blue), GuideGen tumour (yellow), lesion (red)",
        fontsize=10,
    )
    fig.subplots_adjust(bottom=0.12, top=0.93, hspace=0.12, wspace=0.05)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_png_atomically(fig, out, dpi=90)


def check_out(out: str | os.PathLike[str]) -> Path:
    """The output folder: new, or an empty folder (checked before any work).

    Raises:
        Text2LesionError: a file, or a folder that is not empty.
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise Text2LesionError(
            f"--out {root} exists and is not a folder; give a new or empty folder"
        )
    if root.is_dir() and any(root.iterdir()):
        raise Text2LesionError(f"--out {root} is not empty; give a new or empty folder")
    return root


def write_cases(
    out: str | os.PathLike[str], cases: Sequence[T2LCase], *, settings: dict[str, Any]
) -> Path:
    """Write the cases (layout in the bench README) into a hidden folder, then rename it to ``out``."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    from .data import save_nifti
    from .lesiondiffusion._io import atomic_json
    from .lesiondiffusion.pipeline import _save_like

    root = check_out(out)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for case in cases:
            ornt = ornt_transform(io_orientation(case.affine), axcodes2ornt(("R", "A", "S")))

            def ras(a: np.ndarray, ornt: np.ndarray = ornt) -> np.ndarray:
                return apply_orientation(a, ornt)

            _save_like(
                tmp / "imagesTr" / f"{case.name}_0000.nii.gz", case.ct, case.affine, case.header
            )
            save_nifti(
                tmp / "labelsTr" / f"{case.name}.nii.gz", case.labels, case.affine, dtype="uint8"
            )
            save_nifti(
                tmp / "lesions" / f"{case.name}.nii.gz", case.lesion, case.affine, dtype="uint8"
            )
            org_dtype = "uint8" if int(case.organs.max()) < 256 else "int16"
            save_nifti(
                tmp / "organs" / f"{case.name}.nii.gz", case.organs, case.affine, dtype=org_dtype
            )
            if case.torso is not None:
                save_nifti(
                    tmp / "torso" / f"{case.name}_0000.nii.gz",
                    case.torso,
                    case.affine,
                    dtype="int16",
                )
            _preview(case, ras, tmp / "preview" / f"{case.name}.png")
            atomic_json(
                tmp / "meta" / f"{case.name}.json",
                {
                    **case.meta,
                    "files": {
                        "ct": f"imagesTr/{case.name}_0000.nii.gz",
                        "labels": f"labelsTr/{case.name}.nii.gz",
                        "lesion": f"lesions/{case.name}.nii.gz",
                        "organs": f"organs/{case.name}.nii.gz",
                        "torso": f"torso/{case.name}_0000.nii.gz"
                        if case.torso is not None
                        else None,
                        "preview": f"preview/{case.name}.png",
                    },
                },
            )
        atomic_json(
            tmp / "dataset.json",
            {
                "name": "ctsynth text2lesion",
                "description": "GuideGen torso + LesionDiffusion lesion (ctsynth-bench)",
                "channel_names": {"0": "CT"},
                "labels": LABELS,
                "numTraining": len(cases),
                "file_ending": ".nii.gz",
                "extra_folders": {
                    "lesions": "lesion mask 0/1",
                    "organs": "TotalSegmentator v2 map used by LesionDiffusion",
                    "torso": "CT before the lesion",
                    "meta": "sidecar JSON",
                    "preview": "PNG",
                },
                "settings": settings,
            },
        )
        if root.is_dir():
            root.rmdir()  # empty (checked)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def summary_line(cases: Sequence[T2LCase]) -> str:
    """One line per case for the CLI."""
    lines = []
    for c in cases:
        m = c.meta
        lines.append(
            f"{c.name}: {m['lesion_type']} in {m['report']['organ']}, {m['lesion_voxels']} voxels "
            f"({json.dumps(m['geometry']['shape'])} at {m['geometry']['spacing_mm'][0]:g} mm)"
        )
    return "\n".join(lines)
