"""GuideGen (Dai et al., AAAI 2026): prompt -> anatomy label map -> CT.

This package will hold the whole system: its presets (``demo``, ``paper``), its stages (the
categorical diffusion over GuideGen's 21 label classes with knowledge injection, the anatomy-aware
HDR autoencoder, the latent diffusion conditioned on the label map and the prompt) trained through
``ctsynth_bench.train``, the synthesis pipeline and its evaluation. It is registered in
:data:`ctsynth_bench.systems.SYSTEMS` as ``guidegen``.
"""
