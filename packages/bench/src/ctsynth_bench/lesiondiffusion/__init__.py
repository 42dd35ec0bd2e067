"""LesionDiffusion (Lei et al., MICCAI 2025): report -> box -> LMNet mask -> LINet inpainting.

This package will hold the whole system: its presets (``demo``, ``paper``), its stages (VQ-GAN,
LMNet, LINet) trained through ``ctsynth_bench.train``, the synthesis pipeline (report -> bbox in
the organ -> crop around the box -> mask -> latent inpainting -> paste back into the real CT) and
its evaluation. It is registered in :data:`ctsynth_bench.systems.SYSTEMS` as ``lesiondiffusion``.
"""
