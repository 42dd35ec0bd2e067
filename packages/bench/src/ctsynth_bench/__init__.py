"""Datasets, text encoders, the LesionDiffusion and GuideGen systems, training, evaluation and the `bench` CLI.

One room per concern (see the package README, "Where things live"): ``data`` (real CT, loaders,
crops, label tables), ``rulesynth`` (rule-based lesions), ``viz`` (figures), ``cli`` (``bench``),
``systems`` (the registry of full systems), ``lesiondiffusion`` and ``guidegen`` (the systems).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ctsynth-bench")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
