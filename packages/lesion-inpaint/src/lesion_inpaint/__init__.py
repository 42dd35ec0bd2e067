"""Gaussian diffusion for lesion masks (LMNet), latent inpainting (LINet) and latent generation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lesion-inpaint")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
