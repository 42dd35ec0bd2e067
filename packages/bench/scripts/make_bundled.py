"""Regenerate the cases bundled in ctsynth-bench (``src/ctsynth_bench/_bundled``) from fetched data.

    uv run python packages/bench/scripts/make_bundled.py [--cache-dir DIR]

Runs ``bench data fetch`` for the cases it needs (``abdomen``, ``lung2``) if they are not cached, then:

* ``abdomen``: the fetched case unchanged (TotalSegmentator ``example_ct`` as int16 HU + its
  61-label ``example_seg_fast_force_split`` organ map as uint8).
* ``chest``: pyradiomics ``lung2`` cropped to the derived lung labels plus a 15 mm margin and
  resampled to 2 mm isotropic voxels on an axis-aligned grid that keeps the source's world
  coordinates (the new affine is ``diag(2, 2, 2)`` with the crop's corner as origin). CT: trilinear;
  lesion: trilinear on 0/1 then ``>= 0.5``; organs and body: nearest neighbour.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from ctsynth_bench.data import fetch, load_case, save_nifti
from scipy import ndimage

HERE = Path(__file__).resolve().parent
BUNDLED = HERE.parent / "src" / "ctsynth_bench" / "_bundled"
CHEST_SOURCE = "lung2"
CHEST_SPACING = 2.0
CHEST_MARGIN_MM = 15.0


def _resample(arr: np.ndarray, coords: np.ndarray, order: int, cval: float) -> np.ndarray:
    return ndimage.map_coordinates(arr.astype(np.float32), coords, order=order, mode="constant", cval=cval)


def make_chest(cache_dir: Path | None) -> dict:
    case = load_case(CHEST_SOURCE, cache_dir)
    aff = case.affine
    if not np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3])), atol=1e-6):
        raise SystemExit(f"{CHEST_SOURCE}: expected an axis-aligned affine")
    lung = np.isin(case.organs, (10, 11, 12, 13, 14))
    idx = np.argwhere(lung)
    lo_w = aff[:3, :3] @ idx.min(axis=0) + aff[:3, 3] - CHEST_MARGIN_MM
    hi_w = aff[:3, :3] @ idx.max(axis=0) + aff[:3, 3] + CHEST_MARGIN_MM
    # Keep inside the source volume.
    vol_lo = aff[:3, 3]
    vol_hi = aff[:3, :3] @ (np.array(case.ct.shape) - 1) + aff[:3, 3]
    lo_w = np.maximum(lo_w, vol_lo)
    hi_w = np.minimum(hi_w, vol_hi)
    shape = tuple(int(n) for n in np.floor((hi_w - lo_w) / CHEST_SPACING) + 1)
    new_aff = np.diag([CHEST_SPACING] * 3 + [1.0])
    new_aff[:3, 3] = lo_w
    # Target voxel -> world -> source voxel.
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = new_aff[:3, :3] @ grid + new_aff[:3, 3:4]
    src = np.linalg.inv(aff)[:3, :3] @ world + np.linalg.inv(aff)[:3, 3:4]
    ct = _resample(case.ct, src, 1, -1024.0).reshape(shape)
    lesion = (_resample(case.lesion, src, 1, 0.0).reshape(shape) >= 0.5).astype(np.uint8)
    organs = _resample(case.organs, src, 0, 0.0).reshape(shape).astype(np.uint8)
    body = _resample(case.body, src, 0, 0.0).reshape(shape).astype(np.uint8)
    out = BUNDLED / "chest"
    out.mkdir(parents=True, exist_ok=True)
    save_nifti(out / "ct.nii.gz", np.rint(ct), new_aff, dtype="int16")
    save_nifti(out / "lesion.nii.gz", lesion, new_aff, dtype="uint8")
    save_nifti(out / "organs.nii.gz", organs, new_aff, dtype="uint8")
    save_nifti(out / "body.nii.gz", body, new_aff, dtype="uint8")
    meta = {
        "name": "chest",
        "description": "chest CT with a lung tumour (pyradiomics lung2), cropped to the lungs, 2 mm",
        "source": "pyradiomics==3.1.0 sdist data/lung2_image.nrrd + data/lung2_label.nrrd, BSD-3-Clause",
        "shape": list(shape),
        "spacing_mm": [CHEST_SPACING] * 3,
        "organ_ids": sorted(int(v) for v in np.unique(organs) if v),
        "notes": "Cropped to the derived lungs + 15 mm, resampled from 0.63x0.63x5 mm to 2 mm "
        "(CT trilinear, lesion trilinear >= 0.5, organs/body nearest). organs: lung labels derived "
        "from HU (ctsynth_bench.data._lungs; left/right reliable, lobes split by height: an "
        "approximation) and the thoracic oesophagus, id 15 (ctsynth_bench.data._esophagus: "
        "model-based, upper and middle thorax only, derived on the source grid). body.nii.gz: "
        "body mask (HU > -500, largest component, holes filled).",
    }
    (out / "case.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def make_abdomen(cache_dir: Path | None) -> None:
    from ctsynth_bench.data import list_cases

    src = next(i.path for i in list_cases(cache_dir) if i.name == "abdomen" and i.where == "fetched")
    out = BUNDLED / "abdomen"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("ct.nii.gz", "organs.nii.gz", "case.json"):
        shutil.copyfile(src / name, out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    fetch(args.cache_dir, cases=("abdomen", CHEST_SOURCE))
    make_abdomen(args.cache_dir)
    meta = make_chest(args.cache_dir)
    for path in sorted(BUNDLED.rglob("*.nii.gz")):
        print(f"{path.relative_to(BUNDLED)}  {path.stat().st_size / 1e6:.2f} MB")
    print("chest shape", meta["shape"])


if __name__ == "__main__":
    main()
