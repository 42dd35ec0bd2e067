"""The diffusion hyper-parameters shared by LMNet, LINet and the latent generator."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import get_args

from ._sampling import GaussianSampler, InpaintingSampler
from ._schedulers import DDIMScheduler, DDPMScheduler, InpaintingDDIMScheduler, ScheduleName
from .exceptions import ConfigError, did_you_mean

__all__ = ["DiffusionConfig"]


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """Noise schedule, sampler and guidance settings.

    Attributes:
        num_train_timesteps: T (paper: 1000).
        schedule: ``"scaled_linear_beta"`` (authors' code, 0.0015-0.0195) or ``"cosine"`` (the
            LesionDiffusion paper text).
        beta_start: first beta of the scaled-linear schedule.
        beta_end: last beta of the scaled-linear schedule.
        num_inference_steps: DDIM steps (paper: 200).
        eta: DDIM stochasticity (authors: 1.0).
        guidance_scale: classifier-free guidance scale at sampling (paper: 2.5; 1 = off).
        cond_drop_prob: probability of replacing the text context by the null context in training.
        clip_sample: clamp the predicted x_0 to [-c, c] during sampling, or None.
    """

    num_train_timesteps: int = 1000
    schedule: ScheduleName = "scaled_linear_beta"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    num_inference_steps: int = 200
    eta: float = 1.0
    guidance_scale: float = 2.5
    cond_drop_prob: float = 0.15
    clip_sample: float | None = None

    def __post_init__(self) -> None:
        if self.schedule not in get_args(ScheduleName):
            raise ConfigError(
                f"unknown schedule {self.schedule!r}; allowed: {list(get_args(ScheduleName))}."
                + did_you_mean(self.schedule, get_args(ScheduleName))
            )
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ConfigError(
                f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {self.num_inference_steps}"
            )
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ConfigError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if self.guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta must be in [0, 1], got {self.eta}")

    def _kw(self) -> dict:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "schedule": self.schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "clip_sample": self.clip_sample,
        }

    def ddpm(self) -> DDPMScheduler:
        """A fresh :class:`DDPMScheduler` (training noise / ancestral sampling)."""
        return DDPMScheduler(**self._kw())

    def ddim(self) -> DDIMScheduler:
        """A fresh :class:`DDIMScheduler` with this ``eta``."""
        return DDIMScheduler(**self._kw(), eta=self.eta)

    def inpainting_ddim(self) -> InpaintingDDIMScheduler:
        """A fresh :class:`InpaintingDDIMScheduler` with this ``eta``."""
        return InpaintingDDIMScheduler(**self._kw(), eta=self.eta)

    def _sampling(self, num_inference_steps: int | None, guidance_scale: float | None) -> dict:
        return {
            "num_inference_steps": self.num_inference_steps if num_inference_steps is None else num_inference_steps,
            "guidance_scale": self.guidance_scale if guidance_scale is None else guidance_scale,
        }

    def gaussian_sampler(
        self, *, num_inference_steps: int | None = None, guidance_scale: float | None = None
    ) -> GaussianSampler:
        """A DDIM :class:`GaussianSampler`; ``None`` takes this config's steps and guidance."""
        return GaussianSampler(scheduler=self.ddim(), **self._sampling(num_inference_steps, guidance_scale))

    def inpainting_sampler(
        self, *, num_inference_steps: int | None = None, guidance_scale: float | None = None
    ) -> InpaintingSampler:
        """An :class:`InpaintingSampler`; ``None`` takes this config's steps and guidance."""
        return InpaintingSampler(
            scheduler=self.inpainting_ddim(), **self._sampling(num_inference_steps, guidance_scale)
        )

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiffusionConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)
