"""The two ways the systems use a text encoder.

* LesionDiffusion conditions LMNet and LINet on the attributes of a structured report, one token
  per attribute: each attribute is written as ``"name: value"`` (underscores in the name become
  spaces), encoded, and pooled to a single token by the masked mean over its token states, as
  sentence-embedding models pool (:func:`encode_attributes`).
* GuideGen conditions on the token states of a free-text prompt (:func:`encode_prompts`).

Both return standardised tokens: every output token has mean 0 and standard deviation 1 over its
D features (a pooled token is standardised again after pooling, since averaging shrinks it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ._encoder import TextEncoder, _check_texts, standardize_tokens
from ._errors import TextEncoderError


def attribute_text(name: str, value: str) -> str:
    """The sentence an attribute is encoded as: ``"surface characteristics: smooth"``."""
    return f"{name.replace('_', ' ').strip()}: {value.strip()}"


def _as_rows(
    attrs: Mapping[str, str] | Sequence[Mapping[str, str]],
) -> list[Mapping[str, str]]:
    if isinstance(attrs, Mapping):
        return [attrs]
    if isinstance(attrs, str) or not isinstance(attrs, Sequence):
        raise TextEncoderError(
            "attrs must be a mapping of attribute name to value, or a list of such mappings; "
            f"got {type(attrs).__name__}"
        )
    if len(attrs) == 0:
        raise TextEncoderError("attrs is an empty list; give at least one mapping")
    for i, row in enumerate(attrs):
        if not isinstance(row, Mapping):
            raise TextEncoderError(
                f"attrs[{i}] must be a mapping of attribute name to value, got {type(row).__name__}"
            )
    return list(attrs)


def encode_attributes(
    encoder: TextEncoder,
    attrs: Mapping[str, str] | Sequence[Mapping[str, str]],
) -> torch.Tensor:
    """One standardised token per report attribute (LesionDiffusion's conditioning).

    Args:
        encoder: Any :class:`TextEncoder`.
        attrs: One mapping ``{attribute name: value}`` (batch of one) or a list of ``B``
            mappings with the same names. The attribute order is the first mapping's order.

    Returns:
        ``(B, n_attr, D)`` float32 on ``encoder.device``; token ``j`` of row ``b`` is the masked
        mean of the token states of ``"name_j: value_bj"``, standardised over D.

    Raises:
        TextEncoderError: ``attrs`` is empty, not string to string, or rows name different
            attributes.
    """
    rows = _as_rows(attrs)
    names = list(rows[0].keys())
    if not names:
        raise TextEncoderError("attrs[0] has no attributes; give at least one name: value pair")
    for i, row in enumerate(rows):
        if set(row.keys()) != set(names):
            missing = sorted(set(names) - set(row.keys()))
            extra = sorted(set(row.keys()) - set(names))
            raise TextEncoderError(
                f"attrs[{i}] names other attributes than attrs[0]: missing {missing}, "
                f"extra {extra}; every row needs the same attributes"
            )
        for name in names:
            if not isinstance(name, str) or not isinstance(row[name], str):
                raise TextEncoderError(
                    f"attrs[{i}][{name!r}] must map a string name to a string value, "
                    f"got {type(name).__name__} -> {type(row[name]).__name__}"
                )
    texts = [attribute_text(name, row[name]) for row in rows for name in names]
    tokens, mask = encoder.encode(texts)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    return standardize_tokens(pooled).reshape(len(rows), len(names), -1)


def encode_prompts(
    encoder: TextEncoder, prompts: str | Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states of free-text prompts (GuideGen's conditioning).

    Args:
        encoder: Any :class:`TextEncoder`.
        prompts: One prompt or ``B`` prompts.

    Returns:
        ``tokens`` ``(B, L, D)`` float32 (standardised per token, padding zero) and ``mask``
        ``(B, L)`` bool, both on ``encoder.device``.

    Raises:
        TextEncoderError: ``prompts`` is empty or holds a non-string.
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    _check_texts(texts, "prompts")
    return encoder.encode(texts)
