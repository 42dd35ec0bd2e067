"""MONAI's LatentDiffusionInferer must work unchanged with both autoencoders."""

from __future__ import annotations

import ct_autoencoder as ca
import pytest
import torch
from monai.inferers import LatentDiffusionInferer
from monai.networks.schedulers import DDPMScheduler
from torch import nn

HDR_TINY = ca.HDRAutoencoderConfig(
    name="tiny", channels=(4, 8), num_res_blocks=1, norm_groups=1, latent_channels=3, num_embeddings=32,
    num_label_classes=8, label_embed_dim=2, crop_size=16, disc_channels=4, disc_layers=2, num_frames=1,
)


class _TinyDenoiser(nn.Module):
    """Minimal epsilon-predictor with the DiffusionModelUNet call signature (no einops needed)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)
        self.t_embed = nn.Embedding(1000, channels)

    def forward(self, x, timesteps, context=None, **kwargs):
        return self.conv(x) + self.t_embed(timesteps.long()).reshape(x.shape[0], -1, 1, 1, 1)


@pytest.mark.parametrize("kind", ["vqgan", "hdr"])
def test_latent_diffusion_inferer_trains_and_samples(kind, gen):
    if kind == "vqgan":
        ae = ca.VQGAN(config=ca.VQGANConfig(name="t", channels=(4,), strides=(2,), num_res_layers=1,
                                            num_embeddings=16, embedding_dim=3, crop_size=16)).eval()
    else:
        ae = ca.HDRAutoencoder(config=HDR_TINY).eval()
    unet = _TinyDenoiser(3)
    sched = DDPMScheduler(num_train_timesteps=10)
    inferer = LatentDiffusionInferer(sched, scale_factor=1.0)
    x = torch.rand(1, 1, 16, 16, 16, generator=gen) * 2 - 1
    noise = torch.randn(1, 3, 8, 8, 8, generator=gen)
    t = torch.tensor([3])
    pred = inferer(inputs=x, autoencoder_model=ae, diffusion_model=unet, noise=noise, timesteps=t)
    assert pred.shape == noise.shape
    pred.pow(2).mean().backward()  # trains the denoiser through the inferer
    assert unet.conv.weight.grad is not None
    with torch.no_grad():
        img = inferer.sample(input_noise=noise, autoencoder_model=ae, diffusion_model=unet, scheduler=sched,
                             verbose=False)
    assert img.shape == x.shape
    assert torch.isfinite(img).all()


class _Recorder(nn.Module):
    """Denoiser that records its inputs and predicts a fixed function of them."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 1)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, timesteps, context=None, **kwargs):
        self.inputs.append(x.detach().clone())
        return 0.1 * self.conv(x)


@pytest.mark.parametrize("kind", ["vqgan", "hdr"])
def test_inferer_diffuses_scaled_latents_and_unscales_before_decoding(kind, gen):
    from monai.networks.schedulers import DDIMScheduler

    cfg = (ca.VQGANConfig(name="t", channels=(4,), strides=(2,), num_res_layers=1, num_embeddings=16,
                          embedding_dim=3, crop_size=16) if kind == "vqgan" else HDR_TINY)
    torch.manual_seed(0)
    ae = ca.build_model(cfg).eval()
    x = torch.rand(3, 1, 16, 16, 16, generator=gen) * 2 - 1
    sf = ca.measure_scale_factor(ae, [x[:2], x[2:]])
    with torch.no_grad():
        z = ae.encode_stage_2_inputs(x)
    assert sf == pytest.approx(1.0 / float(z.double().std(unbiased=False)), rel=1e-9)
    assert ae.scale_factor == 1.0  # measuring records nothing by itself
    ae.scale_factor = sf
    assert ae.config.scale_factor == sf
    with pytest.raises(ca.ConfigError, match="scale_factor must be finite and > 0"):
        ae.scale_factor = 0.0

    # training: the denoiser sees add_noise(z * scale_factor)
    sched = DDPMScheduler(num_train_timesteps=10)
    inferer = LatentDiffusionInferer(sched, scale_factor=ae.scale_factor)
    unet = _Recorder(3)
    t = torch.tensor([4, 4, 4])
    inferer(inputs=x, autoencoder_model=ae, diffusion_model=unet, noise=torch.zeros_like(z), timesteps=t)
    torch.testing.assert_close(unet.inputs[-1], sched.add_noise(z * sf, torch.zeros_like(z), t))
    scaled = unet.inputs[-1] / float(sched.alphas_cumprod[4].sqrt())
    assert float(scaled.double().std(unbiased=False)) == pytest.approx(1.0, rel=1e-4)

    # sampling: the same scaled trajectory, divided by scale_factor before decoding
    decoded: list[torch.Tensor] = []
    original = ae.decode_stage_2_outputs
    ae.decode_stage_2_outputs = lambda lat, *a, **k: decoded.append(lat.clone()) or original(lat, *a, **k)
    noise = torch.randn(1, 3, 8, 8, 8, generator=gen)
    for factor in (1.0, sf):
        ddim = DDIMScheduler(num_train_timesteps=10)
        ddim.set_timesteps(5)
        with torch.no_grad():
            LatentDiffusionInferer(ddim, scale_factor=factor).sample(
                input_noise=noise, autoencoder_model=ae, diffusion_model=unet, scheduler=ddim, verbose=False
            )
    torch.testing.assert_close(decoded[1], decoded[0] / sf)
