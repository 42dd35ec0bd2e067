"""Validation of image, latent and label-map tensors given to the autoencoders."""

from __future__ import annotations

import torch

from .exceptions import InputShapeError, NonFiniteInputError

__all__ = ["check_finite", "check_image", "check_labels", "check_latent"]


def check_finite(x: torch.Tensor, *, name: str) -> None:
    """Raise :class:`NonFiniteInputError` naming ``name`` if ``x`` holds NaN or inf (skipped on meta)."""
    if x.device.type == "meta":
        return
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise NonFiniteInputError(
            f"{name} holds {int((~finite).sum())} non-finite value(s) (NaN or inf) of {x.numel()}; "
            f"every voxel must be finite (normalise CT with config.window.normalize, fill missing voxels)"
        )


def check_image(x: object, *, factor: int, name: str = "x") -> torch.Tensor:
    """Require a float ``(B, 1, X, Y, Z)`` tensor whose spatial sizes are multiples of ``factor``."""
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(f"{name} must be a torch.Tensor (B, 1, X, Y, Z), got {type(x).__name__}")
    if x.ndim != 5 or x.shape[1] != 1:
        raise InputShapeError(f"{name} must have shape (B, 1, X, Y, Z), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputShapeError(
            f"{name} must be floating point in the model range [-1, 1] (use config.window.normalize), got {x.dtype}"
        )
    bad = [s for s in x.shape[2:] if s % factor]
    if bad:
        near = tuple(factor * max(1, round(s / factor)) for s in x.shape[2:])
        raise InputShapeError(
            f"{name} spatial size {tuple(x.shape[2:])} must be divisible by the downsampling factor {factor}; "
            f"pad or crop to e.g. {near}"
        )
    check_finite(x, name=name)
    return x


def check_latent(z: object, *, channels: int, name: str = "z") -> torch.Tensor:
    """Require a float ``(B, channels, x, y, z)`` latent tensor."""
    if not isinstance(z, torch.Tensor):
        raise InputShapeError(f"{name} must be a torch.Tensor (B, C, x, y, z), got {type(z).__name__}")
    if z.ndim != 5 or z.shape[1] != channels:
        raise InputShapeError(f"{name} must have shape (B, {channels}, x, y, z), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise InputShapeError(f"{name} must be floating point, got {z.dtype}")
    check_finite(z, name=name)
    return z


def check_labels(labels: object, *, like: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """Require an integer ``(B, 1, X, Y, Z)`` or ``(B, X, Y, Z)`` label map with ids < num_classes.

    Returns:
        Long tensor ``(B, X, Y, Z)``.
    """
    if not isinstance(labels, torch.Tensor):
        raise InputShapeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    lab = labels[:, 0] if labels.ndim == 5 and labels.shape[1] == 1 else labels
    if lab.ndim != 4 or (lab.shape[0], *lab.shape[1:]) != (like[0], *like[2:]):
        raise InputShapeError(
            f"labels must have shape {(like[0], 1, *like[2:])} or {(like[0], *like[2:])}, got {tuple(labels.shape)}"
        )
    if lab.device.type == "meta":  # shapes only: values cannot be inspected
        return lab.long()
    if lab.is_floating_point():
        if not torch.equal(lab, lab.round()):
            raise InputShapeError("labels must hold integer class ids, got non-integer floats")
    lab = lab.long()
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        raise InputShapeError(
            f"label ids must be in [0, {num_classes - 1}], got range [{int(lab.min())}, {int(lab.max())}]; "
            f"raise num_label_classes or remap the ids"
        )
    return lab
