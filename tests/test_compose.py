"""One LesionDiffusion step and one GuideGen step composed from the libraries' public APIs alone.

Tiny shapes, untrained networks: what is checked is that the joints fit without glue (shapes,
latent scale, context routing, label spaces, devices) and the guarantees that do not depend on
training (the CT outside the pasted region is bit-identical; every stage's conditioning input
reaches its output).
"""

from __future__ import annotations

import cat_diffusion as cd
import ct_autoencoder as ca
import lesion_inpaint as li
import numpy as np
import torch


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _wake(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give zero-initialised layers (MONAI's attention and output projections) small random weights.

    Untrained, those layers block every signal through them; a trained net has none at zero. This
    stands in for training so that the test can see whether each input is routed to the output.
    """
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def _phantom_ct(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Air around a soft-tissue body with a brighter organ: HU, float32."""
    rng = np.random.default_rng(seed)
    ct = np.full(shape, -1000.0, np.float32)
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    c = [s / 2 for s in shape]
    body = ((x - c[0]) / (0.45 * shape[0])) ** 2 + ((y - c[1]) / (0.4 * shape[1])) ** 2 < 1
    ct[body] = 40.0
    organ = body & (((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) < (0.2 * min(shape)) ** 2)
    ct[organ] = 60.0
    return ct + rng.normal(0, 10, shape).astype(np.float32)


def test_lesiondiffusion_step_vqgan_linet_paste_back() -> None:
    torch.manual_seed(0)  # parameter init only; every draw below takes an explicit generator
    vq = ca.VQGAN(config=ca.get_preset("vqgan-demo")).eval()
    crop = vq.config.crop_size
    ct = _phantom_ct((48, 44, 40), seed=1)
    offset = (8, 6, 4)
    sl = tuple(slice(o, o + crop) for o in offset)
    hu = torch.from_numpy(ct[sl].copy())[None, None]

    # The autoencoder owns its window and its latent scale; the consumer diffuses z * s.
    x = vq.normalize(hu)
    vq.scale_factor = ca.measure_scale_factor(vq, [x])
    assert vq.scale_factor > 0 and vq.scale_factor != 1.0
    with torch.no_grad():
        z0 = vq.encode_stage_2_inputs(x) * vq.scale_factor
    assert abs(float(z0.std()) - 1.0) < 1e-3  # unit variance, as the diffusion schedule assumes

    preset = li.get_preset("demo")
    linet = _wake(li.LINet(config=preset.linet), 5).eval()
    assert z0.shape[1] == preset.linet.latent_channels
    lesion = np.zeros((crop,) * 3, np.uint8)
    lesion[12:20, 10:18, 14:22] = 1
    m = li.resize_mask(torch.from_numpy(lesion)[None, None].float(), z0.shape[2:])
    ctx = torch.randn(1, 6, preset.linet.unet.context_dim, generator=_gen(2))

    def inpaint(context: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            z = linet.inpaint(z0, m, context=context, guidance_scale=2.5, num_inference_steps=3, generator=_gen(3))
            assert torch.equal(z[m.expand_as(z) == 0], z0[m.expand_as(z0) == 0])
            decoded = vq.denormalize(vq.decode_stage_2_outputs(z / vq.scale_factor))
        return decoded[0, 0].numpy()

    decoded = inpaint(ctx)
    out = li.paste_back(ct, decoded, lesion, offset=offset, dilation=1, feather=2)
    assert out.shape == ct.shape and out.dtype == ct.dtype
    region = np.zeros(ct.shape, bool)
    region[sl] = True
    # Outside the crop nothing can change; inside, only a neighbourhood of the lesion does.
    assert np.array_equal(out[~region], ct[~region])
    changed = out != ct
    assert changed.any()
    near = np.zeros(ct.shape, bool)
    near[tuple(slice(o + a - 4, o + b + 4) for o, (a, b) in zip(offset, ((12, 20), (10, 18), (14, 22)), strict=True))] = True
    assert not (changed & ~near).any()
    # The text reaches the pixels: another context gives another lesion.
    other = inpaint(torch.randn(1, 6, preset.linet.unet.context_dim, generator=_gen(4)))
    assert not np.allclose(other[lesion > 0], decoded[lesion > 0])


def test_guidegen_step_tokens_injection_sampler_generator_hdr_decode() -> None:
    torch.manual_seed(0)
    size = 16
    cfg = cd.get_preset("demo", spatial_size=(size,) * 3)
    tcss = _wake(cd.SemanticSynthesizer(config=cfg), 5).eval()
    tokens = torch.randn(2, 7, cfg.context_dim, generator=_gen(1))  # prompt token states (B, L, D)

    with torch.no_grad():
        levels = tcss.encode_context(tokens)  # knowledge injection: one context per UNet level
        assert len(levels) == len(cfg.channels)
        sampler = cd.CategoricalSampler(scheduler=tcss.make_scheduler())
        labels = sampler.fast(tcss, num_steps=4, shape=(2, 1, size, size, size), context=levels, generator=_gen(2))
        # The prompt reaches the label map: other tokens, same noise, another map.
        other = sampler.fast(
            tcss, num_steps=4, shape=(2, 1, size, size, size), generator=_gen(2),
            context=tcss.encode_context(torch.randn(2, 7, cfg.context_dim, generator=_gen(9))),
        )
    assert not torch.equal(labels, other)
    assert labels.dtype == torch.int64 and labels.shape == (2, 1, size, size, size)
    assert int(labels.min()) >= 0 and int(labels.max()) < cfg.num_classes

    hdr = ca.HDRAutoencoder(
        config=ca.get_preset("hdr-demo", crop_size=size, num_label_classes=cfg.num_classes)
    ).eval()
    lat = size // 4  # hdr-demo downsamples twice
    p = li.get_preset("demo")
    gen_cfg = p.latent_generator
    assert gen_cfg.num_label_classes == cfg.num_classes  # one label space from TCSS to generator
    assert gen_cfg.latent_channels == hdr.config.latent_channels
    gen = _wake(li.LatentGenerator(config=gen_cfg), 6).eval()
    gen_levels = [torch.randn(2, 4, gen_cfg.unet.context_dim, generator=_gen(3)) for _ in gen_cfg.unet.channels]
    with torch.no_grad():
        z = gen.sample(labels, latent_size=(lat,) * 3, context=gen_levels, num_inference_steps=3, generator=_gen(4))
        assert z.shape == (2, hdr.config.latent_channels, lat, lat, lat)
        # The label map reaches the latents (concatenated one-hot condition).
        z_other = gen.sample(
            torch.zeros_like(labels), latent_size=(lat,) * 3, context=gen_levels, num_inference_steps=3,
            generator=_gen(4),
        )
        assert not torch.allclose(z, z_other)
        ct = hdr.denormalize(hdr.decode_stage_2_outputs(z / hdr.scale_factor, labels))
        # The same latents with another label map: the anatomy-aware decoder follows the map.
        ct_other = hdr.denormalize(hdr.decode_stage_2_outputs(z / hdr.scale_factor, torch.roll(labels, 4, dims=2)))
    assert ct.shape == (2, 1, size, size, size)
    assert torch.isfinite(ct).all()
    assert not torch.allclose(ct, ct_other)
