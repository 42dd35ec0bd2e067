"""Figures and Markdown reports: views of a CT through a label, galleries of lesion datasets.

* :func:`render_views` - axial, coronal and sagittal slices through a label's centre (``bench data
  show``), with named HU :data:`WINDOWS`.
* :func:`make_gallery` - one lesion per type from a dataset written by ``bench data lesions``.
"""

from ._gallery import make_gallery
from ._views import WINDOWS, render_views

__all__ = ["WINDOWS", "make_gallery", "render_views"]
