from __future__ import annotations

import dataclasses

import ct_autoencoder as ca
import numpy as np
import pytest
import torch


def test_preset_lookup_and_did_you_mean():
    assert ca.vqgan_preset("paper").num_embeddings == 2048
    assert ca.hdr_preset("paper").num_embeddings == 8192
    with pytest.raises(ca.UnknownPresetError, match="did you mean 'paper'"):
        ca.vqgan_preset("papr")
    with pytest.raises(ValueError, match="demo_kl"):
        ca.hdr_preset("demo-kl")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ca.vqgan_preset("demo").crop_size = 64  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "latent"),
    [("demo", (4, 16, 16, 16)), ("paper", (4, 64, 64, 64))],
)
def test_vqgan_preset_latent_sizes(name, latent):
    cfg = ca.vqgan_preset(name)
    assert cfg.latent_shape((cfg.crop_size,) * 3) == latent


@pytest.mark.parametrize(
    ("name", "latent"),
    [("demo", (4, 8, 8, 8)), ("demo_kl", (4, 8, 8, 8)), ("paper", (8, 32, 32, 32)), ("paper_kl", (4, 32, 32, 32))],
)
def test_hdr_preset_latent_sizes(name, latent):
    cfg = ca.hdr_preset(name)
    assert cfg.latent_shape((cfg.crop_size,) * 3) == latent


def test_demo_models_produce_the_stated_latents():
    x = torch.zeros(1, 1, 32, 32, 32)
    vq = ca.VQGAN(config=ca.vqgan_preset("demo")).eval()
    with torch.no_grad():
        assert vq.encode_stage_2_inputs(x).shape == (1, 4, 16, 16, 16)
        assert vq.decode_stage_2_outputs(torch.zeros(1, 4, 16, 16, 16)).shape == x.shape
    for name in ("demo", "demo_kl"):
        m = ca.HDRAutoencoder(config=ca.hdr_preset(name)).eval()
        with torch.no_grad():
            assert m.encode_stage_2_inputs(x).shape == (1, 4, 8, 8, 8)
            assert m.decode_stage_2_outputs(torch.zeros(1, 4, 8, 8, 8)).shape == x.shape


@pytest.mark.parametrize("kind", ["vqgan", "hdr", "hdr_kl"])
def test_paper_presets_build_and_give_paper_latent_shapes_on_meta(kind):
    # Paper sizes (128^3) on the meta device: shapes only, no memory, no compute.
    cfg = {"vqgan": ca.vqgan_preset("paper"), "hdr": ca.hdr_preset("paper"), "hdr_kl": ca.hdr_preset("paper_kl")}[kind]
    with torch.device("meta"):
        model = ca.build_model(cfg).eval()
        x = torch.empty(1, 1, 128, 128, 128)
        h = model.encode_pre_quant(x)
        z = model.quantize(h)[0]
        y = model.decode(z)
    assert tuple(z.shape[1:]) == cfg.latent_shape((128, 128, 128))
    assert y.shape == x.shape


def test_config_validation_messages():
    with pytest.raises(ca.ConfigError, match="stride must be 1 or 2"):
        ca.VQGANConfig(name="x", channels=(8,), strides=(3,), num_res_layers=1, num_embeddings=8,
                       embedding_dim=2, crop_size=16)
    with pytest.raises(ca.ConfigError, match="nearest: 32"):
        ca.HDRAutoencoderConfig(name="x", channels=(8, 8, 8), num_res_blocks=1, latent_channels=2, crop_size=30)
    with pytest.raises(ca.ConfigError, match="did you mean 'hinge'"):
        ca.HDRAutoencoderConfig(name="x", channels=(8,), num_res_blocks=1, latent_channels=2, crop_size=8,
                                adversarial_criterion="hinged")  # type: ignore[arg-type]


def test_config_json_round_trip():
    for cfg in [*ca.VQGAN_PRESETS.values(), *ca.HDR_PRESETS.values()]:
        assert ca.config_from_dict(ca.config_to_dict(cfg)) == cfg
    with pytest.raises(ca.ConfigError, match="unknown"):
        ca.config_from_dict({**ca.config_to_dict(ca.vqgan_preset("demo")), "bogus": 1})


def test_hu_window_is_invertible_inside_and_clips_outside():
    w = ca.HUWindow(lower=-1000.0, upper=1000.0)
    hu = torch.tensor([-1000.0, -500.0, 0.0, 40.0, 1000.0])
    x = w.normalize(hu)
    torch.testing.assert_close(x, torch.tensor([-1.0, -0.5, 0.0, 0.04, 1.0]))
    torch.testing.assert_close(w.denormalize(x), hu, atol=1e-3, rtol=0)  # float32: 1e-3 HU
    assert float(w.normalize(torch.tensor(3000.0))) == 1.0
    arr = np.array([-200.0, 300.0], dtype=np.float32)
    np.testing.assert_allclose(w.denormalize(w.normalize(arr)), arr, rtol=1e-6)
    assert ca.hdr_preset("paper").window == ca.HUWindow(lower=-1200.0, upper=1200.0)
    with pytest.raises(ca.ConfigError, match="upper > lower"):
        ca.HUWindow(lower=10.0, upper=-10.0)
