"""VQ-GAN and anatomy-aware HDR autoencoder for 3D CT, with a tiled codec."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ct-autoencoder")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
