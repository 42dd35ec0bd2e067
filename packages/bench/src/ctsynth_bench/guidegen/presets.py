"""GuideGen system presets: the three stages' configurations, checked against each other.

``demo`` is sized for a 2-core CPU (label map 16^3 x 24 mm, CT 32^3 x 12 mm, latent 4 x 16^3); ``paper`` uses the published sizes (mask 128^3, image 256^3, cosine T = 1000, lr 2e-5)
and needs a GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cat_diffusion import SynthesizerConfig

from ..exceptions import BenchError
from ._labels import NUM_CLASSES, TUMOUR

__all__ = ["GuideGenPreset", "get_preset", "tumour_class_weights"]


#: Default weight of the count guidance (``GuideGenPreset.count_weight``), chosen on the demo.
COUNT_WEIGHT = 32.0


def tumour_class_weights(tumour_weight: float) -> tuple[float, ...]:
    """Loss weight per class: ``tumour_weight`` for the tumour, 1 for every other class."""
    w = [1.0] * NUM_CLASSES
    w[TUMOUR] = float(tumour_weight)
    return tuple(w)


@dataclass(frozen=True)
class GuideGenPreset:
    """Whole-system configuration.

    Attributes:
        name: preset name.
        tcss: the TCSS (cat_diffusion) configuration.
        label_spacing: label-map voxel size in mm.
        ct_size: CT edge in voxels (the CT covers the same field of view).
        tumour_weight: loss weight of the tumour class (others 1).
        ce_weight: weight of the x0 cross-entropy beside the KL of Eq. 6.
        cond_drop: probability of training a sample with the null prompt (enables guidance and
            the no-text measurement).
        guidance: classifier-free guidance scale of the TCSS at sampling (1 = off).
        count_weight: weight of the count guidance at sampling
            (:func:`cat_diffusion.count_guidance`, not in the paper): the x0 logits move towards
            maps whose expected number of tumour pieces is the prompt's count; 0 = off (the
            knowledge injection alone). See the bench README for what it changed on the demo.
        tcss_chunk: samples per TCSS network call at sampling (0 = the prompts and the null
            prompt of the whole batch in one call). The paper preset uses 1: on an H100 its whole
            inference then peaks at 6.69 GiB allocated instead of 11.53 GiB, for the same labels
            and 4 s more over 100 steps (``scripts/paper_memory.py --e2e --device cuda``).
        field_weight: weight of the field probe's cross-entropy (site, count and size read
            linearly from the knowledge-injection contexts, :class:`~.stages.FieldProbe`); 0 = the
            paper's loss alone. On the demo it made the contexts carry count and size (changing the
            count moved them by 0.07 % before, 110 % after) and the size follow the prompt.
        count_augment: probability that a training input ``x_t`` (``t < 0.7 T``) gets one tumour
            added or removed while the target keeps the prompt's count
            (:func:`~.stages.perturb_tumours`), meant to teach the network to correct the count; 0 =
            off (the default: fine-tuning the demo TCSS for 4,140 steps with 0.5 did not raise the
            count match, 0.43 against 0.46 without it on 144 prompts).
        mass_weight: weight of the tumour-mass term
            (:func:`cat_diffusion.class_mass_loss`): the calibrated tumour probability the network
            puts on voxels that ``x_t`` does not show as tumour should add up to the number of
            such tumour voxels in ``x_0``; 0 = the paper's loss alone (the default: fine-tunes of
            the demo TCSS with 0.05 and 0.2 gave a count match of 0.49 on 144 prompts, against
            0.51 without it, and a lower site rate).
        mass_near: voxels within this distance of a tumour voxel of ``x_t`` are counted apart
            from the rest, so the term tells growing a shown tumour from starting a new one.
        calibrate: add ``-log(class weight)`` to the TCSS's x0 logits at sampling (undoes the
            weighted loss's bias towards the tumour class).
        lr: learning rate of the TCSS.
        batch_size: TCSS batch size.
        ae_channels: HDR autoencoder widths (one stride-2 step per extra level).
        ae_norm_groups: channel groups of the autoencoder's per-voxel norm (1: one group, as
            LayerNorm over channels; with 4 groups the demo stalled near 300 HU error, with 1 it
            passed the 89 HU baseline in 8 CPU minutes).
        ae_plain_l1: weight of the unwindowed L1 term beside Eq. 8 (0 = the paper's loss).
        ae_adversarial_start: step from which both discriminators train the autoencoder.
        ae_lr: autoencoder learning rate.
        ae_batch_size: autoencoder batch size.
        latent_channels: autoencoder latent channels.
        gen_channels: latent generator UNet channels.
        gen_attention: latent generator attention levels.
        gen_steps: DDIM steps of the latent generator.
        gen_guidance: classifier-free guidance of the latent generator.
        gen_eta: DDIM stochasticity of the latent generator at sampling (0: deterministic; on
            the demo, eta 0 cut the mean HU error of CTs made from real maps from 183 to 160).
        gen_lr: latent generator learning rate.
        gen_batch_size: latent generator batch size.
        decode_tile: CT tile edge of the HDR decoder (0: decode the whole volume at once; larger
            volumes than this are decoded tile by tile with Gaussian blending).
        decode_overlap: CT voxels shared by neighbouring tiles (a quarter of it is dropped at
            each inner tile edge; on the demo decoder tile 24 / overlap 16 agrees with the whole
            volume to 0.2 HU on average, overlap 8 to 5.5 HU).
    """

    name: str
    tcss: SynthesizerConfig
    label_spacing: float = 24.0
    ct_size: int = 32
    tumour_weight: float = 20.0
    ce_weight: float = 1.0
    cond_drop: float = 0.15
    guidance: float = 2.0
    count_weight: float = COUNT_WEIGHT
    tcss_chunk: int = 0
    field_weight: float = 0.0
    count_augment: float = 0.0
    mass_weight: float = 0.0
    mass_near: int = 2
    calibrate: bool = True
    lr: float = 1e-3
    batch_size: int = 8
    ae_channels: tuple[int, ...] = (16, 32)
    ae_norm_groups: int = 1
    ae_plain_l1: float = 1.0
    ae_adversarial_start: int = 1500
    ae_lr: float = 1e-3
    ae_batch_size: int = 4
    latent_channels: int = 4
    gen_channels: tuple[int, ...] = (32, 64, 64)
    gen_attention: tuple[bool, ...] = (False, False, True)
    gen_steps: int = 50
    gen_guidance: float = 1.5
    gen_eta: float = 0.0
    gen_lr: float = 1e-3
    gen_batch_size: int = 8
    decode_tile: int = 0
    decode_overlap: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tcss.num_classes != NUM_CLASSES:
            raise BenchError(
                f"tcss.num_classes must be {NUM_CLASSES} (GuideGen classes), got {self.tcss.num_classes}"
            )
        factor = 2 ** (len(self.ae_channels) - 1)
        if self.ct_size % factor:
            raise BenchError(
                f"ct_size {self.ct_size} must be divisible by the autoencoder's downsampling {factor}"
            )

    @property
    def latent_size(self) -> int:
        return self.ct_size // 2 ** (len(self.ae_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tcss"] = self.tcss.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GuideGenPreset:
        d = dict(d)
        d["tcss"] = SynthesizerConfig.from_dict(d["tcss"])
        for k in ("ae_channels", "gen_channels", "gen_attention"):
            d[k] = tuple(d[k])
        return cls(**d)


#: Noise weights of the demo TCSS: every class but the tumour. Noise never makes a tumour voxel, so
#: one in ``x_t`` is always data; with uniform noise a one-voxel tumour (a small tumour at 24 mm) has
#: look-alikes everywhere at mid noise, and the count was lost there (see the bench README).
TUMOUR_FREE_NOISE = tuple(0.0 if c == TUMOUR else 1.0 for c in range(NUM_CLASSES))


def _demo_tcss(**kw: Any) -> SynthesizerConfig:
    base = dict(
        num_classes=NUM_CLASSES,
        spatial_size=(16, 16, 16),
        num_train_timesteps=200,
        schedule="cosine",
        channels=(16, 32, 64),
        attention_levels=(False, True, True),
        num_res_blocks=1,
        num_head_channels=16,
        norm_num_groups=8,
        conditioning="injection",
        context_dim=384,
        cross_attention_dim=64,
        num_queries=8,
        injection_layers=2,
        injection_heads=4,
        fast_steps=20,
        noise_weights=TUMOUR_FREE_NOISE,
    )
    base.update(kw)
    return SynthesizerConfig(**base)


PRESETS: dict[str, GuideGenPreset] = {
    "demo": GuideGenPreset(name="demo", tcss=_demo_tcss(), field_weight=1.0),
    "paper": GuideGenPreset(
        name="paper",
        tcss=SynthesizerConfig(
            num_classes=NUM_CLASSES,
            spatial_size=(128, 128, 128),
            num_train_timesteps=1000,
            schedule="cosine",
            channels=(64, 64, 128, 128, 256),
            attention_levels=(False, False, False, True, True),
            num_head_channels=32,
            norm_num_groups=32,
            context_dim=384,
            cross_attention_dim=512,
            num_queries=16,
            injection_layers=3,
            injection_heads=8,
            fast_steps=100,
        ),
        label_spacing=3.0,
        tcss_chunk=1,
        ct_size=256,
        lr=2e-5,
        batch_size=2,
        ae_channels=(64, 128, 128),
        ae_norm_groups=16,  # 4 channels per group at width 64 (ct_autoencoder needs >= 3)
        ae_plain_l1=0.0,
        ae_adversarial_start=20_000,
        ae_lr=2e-5,
        ae_batch_size=2,
        latent_channels=8,
        gen_channels=(128, 256, 256, 512),
        gen_attention=(False, False, True, True),
        gen_steps=200,
        gen_guidance=2.5,
        gen_eta=1.0,
        gen_lr=2e-5,
        gen_batch_size=2,
        decode_tile=128,
        decode_overlap=64,
    ),
}


def get_preset(name: str, **overrides: Any) -> GuideGenPreset:
    """A system preset by name (``demo`` | ``paper``), with field overrides.

    ``tcss`` overrides may be given as ``tcss={"channels": (...)}`` (merged into the preset's).
    """
    import difflib

    if name not in PRESETS:
        near = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise BenchError(f"unknown GuideGen preset {name!r}; allowed: {sorted(PRESETS)}{hint}")
    p = PRESETS[name]
    allowed = {f.name for f in dataclasses.fields(GuideGenPreset)} - {"name"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise BenchError(f"unknown GuideGen preset fields {bad}; allowed: {sorted(allowed)}")
    if "tcss" in overrides and isinstance(overrides["tcss"], dict):
        overrides["tcss"] = dataclasses.replace(p.tcss, **overrides["tcss"])
    return dataclasses.replace(p, **overrides)
