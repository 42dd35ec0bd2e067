"""MONAI's LatentDiffusionInferer must work unchanged with both autoencoders."""

from __future__ import annotations

import ct_autoencoder as ca
import pytest
import torch
from monai.inferers import LatentDiffusionInferer
from monai.networks.schedulers import DDPMScheduler
from torch import nn

HDR_TINY = ca.HDRAutoencoderConfig(
    name="tiny", channels=(4, 8), num_res_blocks=1, norm_groups=4, latent_channels=3, num_embeddings=32,
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
