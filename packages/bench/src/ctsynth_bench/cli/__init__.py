"""The ``bench`` command line: one module per command group, a thin shell over the Python API.

* :mod:`.main` - the parser, :data:`~.main.COMMANDS` (group -> module) and :func:`main`.
* :mod:`.data` - ``bench data fetch|list|show``; :mod:`.data_lesions` - ``bench data lesions``.
* :mod:`.systems` - ``bench systems``, read from :mod:`ctsynth_bench.systems`.
"""

from .main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
