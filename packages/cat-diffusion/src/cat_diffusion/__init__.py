"""Categorical (multinomial) diffusion for 3D label maps, with knowledge injection."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cat-diffusion")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
