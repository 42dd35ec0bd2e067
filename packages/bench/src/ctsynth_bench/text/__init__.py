"""Frozen text encoders giving unit-scale tokens for both systems.

``load_text_encoder("minilm")`` loads all-MiniLM-L6-v2 from its registry package; a local Hugging
Face folder loads any BERT-like encoder the same way. :func:`encode_attributes` gives
LesionDiffusion's one token per report attribute, :func:`encode_prompts` GuideGen's prompt token
states. Embeddings are cached on disk by encoder id and text.
"""

from ._cache import EmbeddingCache, text_cache_root
from ._encoder import (
    STANDARDIZATION,
    HFTextEncoder,
    TextEncoder,
    load_text_encoder,
    standardize_tokens,
    text_encoder_names,
)
from ._errors import MissingPackageError, TextEncoderError
from ._uses import attribute_text, encode_attributes, encode_prompts

__all__ = [
    "STANDARDIZATION",
    "EmbeddingCache",
    "HFTextEncoder",
    "MissingPackageError",
    "TextEncoder",
    "TextEncoderError",
    "attribute_text",
    "encode_attributes",
    "encode_prompts",
    "load_text_encoder",
    "standardize_tokens",
    "text_cache_root",
    "text_encoder_names",
]
