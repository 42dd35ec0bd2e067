"""GuideGen (Dai et al., AAAI 2026): prompt -> anatomy label map -> CT.

* :mod:`.prompts` - the authors' prompt template, its fields (kept as labels), strict parsing.
* :mod:`.data` - the demo set: real templates deformed and scaled, tumours placed where the
  prompt says (site, count, size).
* :mod:`.presets` - ``demo`` (2-core CPU: label map 16^3 x 24 mm, CT 32^3 x 12 mm) and ``paper``.
* :mod:`.stages` - TCSS (cat_diffusion with knowledge injection, tumour weighting, condition
  dropout, guidance), HDR autoencoder (ct_autoencoder), latent generator (lesion_inpaint).
* :mod:`.training` - ``bench train guidegen`` on the training engine.
* :mod:`.system` / :mod:`.pipeline` - run folders and the shipped demo weights; synthesis to an
  nnU-Net layout.
* :mod:`.control` / :mod:`.run` - prompt alignment (site, count, text removed, samplers, HU) and
  ``bench run guidegen``.
"""

from .pipeline import encode, generate, labels_to_ct, synthesize_to_folder
from .presets import GuideGenPreset, get_preset
from .prompts import COUNTS, SITES, PromptError, PromptFields, parse_prompt
from .system import GuideGenSystem, load_system, shipped_dir

__all__ = [
    "COUNTS",
    "SITES",
    "GuideGenPreset",
    "GuideGenSystem",
    "PromptError",
    "PromptFields",
    "encode",
    "generate",
    "get_preset",
    "labels_to_ct",
    "load_system",
    "parse_prompt",
    "shipped_dir",
    "synthesize_to_folder",
]
