"""Exponential moving average of a model's weights.

After every optimiser step each floating-point parameter's shadow moves towards it,
``shadow <- decay * shadow + (1 - decay) * param``; buffers (e.g. normalisation statistics) and
integer tensors are copied. The shadow has the model's ``state_dict`` keys, so EMA weights load
into the same model class (``ema.safetensors`` beside ``model.safetensors``).
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """EMA of a module's ``state_dict``.

    Args:
        model: The (unwrapped) module; the shadow starts as a copy of its weights.
        decay: Weight of the past in ``[0, 1)``; 0.999 averages over about 1000 steps.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone() for k, v in model.state_dict().items()
        }
        self._param_names = {name for name, p in model.named_parameters() if p.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow one step towards ``model``'s current weights."""
        current = model.state_dict()
        floats_s, floats_m = [], []
        for key, value in current.items():
            if key in self._param_names:
                floats_s.append(self.shadow[key])
                floats_m.append(value.detach())
            else:
                self.shadow[key].copy_(value)
        if floats_s:
            torch._foreach_lerp_(floats_s, floats_m, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights, keyed like the model's ``state_dict``."""
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the shadow by ``state`` (same keys and shapes)."""
        missing = sorted(set(self.shadow) - set(state))
        extra = sorted(set(state) - set(self.shadow))
        if missing or extra:
            raise KeyError(f"EMA keys differ: missing {missing[:5]}, unexpected {extra[:5]}")
        for key, value in state.items():
            self.shadow[key].copy_(value)
