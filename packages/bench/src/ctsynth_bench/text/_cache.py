"""On-disk cache of text embeddings, one safetensors file per (encoder id, text).

Layout: ``<cache root>/text-embeddings/<encoder id>/<sha256(text)[:2]>/<sha256(text)>.safetensors``
holding one float32 tensor ``tokens`` of shape ``(L, D)`` (the valid tokens only, already
standardised) and the text itself in the safetensors metadata, which is compared on read so a
hash collision or a foreign file can never return the wrong embedding.

The cache root is ``cache_dir`` if given, else ``$CTSYNTH_CACHE``, else the user's cache directory
for ``ctsynth`` (:mod:`platformdirs`). Writes are atomic (temporary file in the same folder,
fsync, :func:`os.replace`); an entry that cannot be read (truncated, corrupt, wrong shape) is
logged, deleted and recomputed, never fatal. Nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CACHE_ENV = "CTSYNTH_CACHE"
_SUBDIR = "text-embeddings"


def text_cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds text-embedding caches.

    Args:
        cache_dir: Explicit cache root; ``None`` means ``$CTSYNTH_CACHE`` or the user's cache
            directory for ``ctsynth``.

    Returns:
        ``<root>/text-embeddings``.
    """
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV])
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("ctsynth"))
    return root / _SUBDIR


class EmbeddingCache:
    """Token embeddings of single texts for one encoder, keyed by the encoder's ``id``.

    Args:
        encoder_id: The encoder's stable id (a folder name: letters, digits, ``-``, ``_``, ``.``).
        dim: Embedding width ``D``; entries of another width are treated as corrupt.
        cache_dir: Cache root (see :func:`text_cache_root`).
    """

    def __init__(
        self, *, encoder_id: str, dim: int, cache_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.folder = text_cache_root(cache_dir) / encoder_id
        self.dim = dim

    def _path(self, text: str) -> Path:
        key = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, text: str) -> torch.Tensor | None:
        """The cached ``(L, D)`` float32 tokens of ``text`` on the CPU, or ``None`` on a miss."""
        from safetensors import safe_open

        path = self._path(text)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tokens = fh.get_tensor("tokens")
            ok = (
                meta.get("text") == text
                and tokens.dtype == torch.float32
                and tokens.ndim == 2
                and tokens.shape[0] >= 1
                and tokens.shape[1] == self.dim
                and bool(torch.isfinite(tokens).all())
            )
        except Exception as exc:  # any unreadable file is a miss: recompute, never fail
            logger.warning("text cache entry %s is unreadable (%s); recomputing", path, exc)
            ok = False
        if not ok:
            logger.warning("text cache entry %s is not valid; recomputing", path)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return tokens

    def put(self, text: str, tokens: torch.Tensor) -> None:
        """Store ``(L, D)`` tokens of ``text`` atomically; a failure to write is only logged."""
        from safetensors.torch import save

        path = self._path(text)
        data = save(
            {"tokens": tokens.detach().to("cpu", torch.float32).contiguous()},
            metadata={"text": text},
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:  # a read-only or full cache must not stop encoding
            logger.warning("could not write text cache entry %s: %s", path, exc)
