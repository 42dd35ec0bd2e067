from __future__ import annotations

import dataclasses

import ct_autoencoder as ca
import numpy as np
import pytest
import torch


def test_get_preset_lookup_overrides_and_did_you_mean():
    assert sorted(ca.PRESETS) == [
        "hdr-demo", "hdr-demo-kl", "hdr-paper", "hdr-paper-kl",
        "vqgan-demo", "vqgan-demo-soft-tissue", "vqgan-paper", "vqgan-paper-soft-tissue",
    ]
    assert ca.get_preset("vqgan-paper").num_embeddings == 2048
    assert ca.get_preset("hdr-paper").num_embeddings == 8192
    assert ca.get_preset("hdr-paper-kl").bottleneck == "kl"
    assert all(cfg.name == name for name, cfg in ca.PRESETS.items())
    with pytest.raises(ca.UnknownPresetError, match="did you mean 'vqgan-paper'"):
        ca.get_preset("vqgan-papr")
    with pytest.raises(ValueError, match="did you mean 'hdr-demo-kl'"):
        ca.get_preset("hdr_demo_kl")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ca.get_preset("vqgan-demo").crop_size = 64  # type: ignore[misc]
    cfg = ca.get_preset("vqgan-demo", crop_size=64, num_embeddings=128)
    assert (cfg.crop_size, cfg.num_embeddings) == (64, 128)
    assert ca.get_preset("vqgan-demo").crop_size == 32  # the registry is untouched
    with pytest.raises(ca.ConfigError, match=r"unknown override\(s\) \['crop'\].*allowed: \[.*'crop_size'"):
        ca.get_preset("vqgan-demo", crop=64)
    with pytest.raises(ca.ConfigError, match="crop_size 33 must be divisible"):
        ca.get_preset("vqgan-demo", crop_size=33)
    # the old helpers only delegate
    assert ca.vqgan_preset("paper") == ca.get_preset("vqgan-paper")
    assert ca.hdr_preset("demo_kl", crop_size=64) == ca.get_preset("hdr-demo-kl", crop_size=64)


def test_soft_tissue_preset_narrows_the_window_and_clips():
    cfg = ca.get_preset("vqgan-demo-soft-tissue")
    assert cfg.window == ca.HUWindow(lower=-200.0, upper=300.0)
    assert cfg.window.clip
    assert dataclasses.replace(cfg, window=ca.get_preset("vqgan-demo").window, name="vqgan-demo") == ca.get_preset(
        "vqgan-demo"
    )
    x = cfg.window.normalize(torch.tensor([-1000.0, -200.0, 40.0, 60.0, 300.0, 1200.0]))
    torch.testing.assert_close(x[[0, 1, 4, 5]], torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    # 20 HU of lesion contrast spans 0.08 of the model range here, 0.02 under -1000..1000
    assert float(x[3] - x[2]) == pytest.approx(0.08, abs=1e-6)
    assert ca.get_preset("vqgan-paper-soft-tissue").num_embeddings == 2048


@pytest.mark.parametrize(
    ("name", "latent"),
    [("demo", (4, 16, 16, 16)), ("paper", (4, 64, 64, 64))],
)
def test_vqgan_preset_latent_sizes(name, latent):
    cfg = ca.get_preset(f"vqgan-{name}")
    assert cfg.latent_shape((cfg.crop_size,) * 3) == latent


@pytest.mark.parametrize(
    ("name", "latent"),
    [("demo", (4, 8, 8, 8)), ("demo-kl", (4, 8, 8, 8)), ("paper", (8, 32, 32, 32)), ("paper-kl", (4, 32, 32, 32))],
)
def test_hdr_preset_latent_sizes(name, latent):
    cfg = ca.get_preset(f"hdr-{name}")
    assert cfg.latent_shape((cfg.crop_size,) * 3) == latent


def test_demo_models_produce_the_stated_latents():
    x = torch.zeros(1, 1, 32, 32, 32)
    vq = ca.VQGAN(config=ca.get_preset("vqgan-demo")).eval()
    with torch.no_grad():
        assert vq.encode_stage_2_inputs(x).shape == (1, 4, 16, 16, 16)
        assert vq.decode_stage_2_outputs(torch.zeros(1, 4, 16, 16, 16)).shape == x.shape
    for name in ("hdr-demo", "hdr-demo-kl"):
        m = ca.HDRAutoencoder(config=ca.get_preset(name)).eval()
        with torch.no_grad():
            assert m.encode_stage_2_inputs(x).shape == (1, 4, 8, 8, 8)
            assert m.decode_stage_2_outputs(torch.zeros(1, 4, 8, 8, 8)).shape == x.shape


@pytest.mark.parametrize("kind", ["vqgan", "hdr", "hdr_kl"])
def test_paper_presets_build_and_give_paper_latent_shapes_on_meta(kind):
    # Paper sizes (128^3) on the meta device: shapes only, no memory, no compute.
    cfg = ca.get_preset({"vqgan": "vqgan-paper", "hdr": "hdr-paper", "hdr_kl": "hdr-paper-kl"}[kind])
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
        ca.HDRAutoencoderConfig(name="x", channels=(8, 8, 8), num_res_blocks=1, norm_groups=2, latent_channels=2,
                                crop_size=30)
    with pytest.raises(ca.ConfigError, match="did you mean 'hinge'"):
        ca.HDRAutoencoderConfig(name="x", channels=(8,), num_res_blocks=1, norm_groups=2, latent_channels=2,
                                crop_size=8, adversarial_criterion="hinged")  # type: ignore[arg-type]
    # the per-voxel group norm needs at least 3 channels per group (1 would erase the signal)
    with pytest.raises(ca.ConfigError, match=r"fewer than 3 channels per group at widths \[8\].*in \[1, 2\]"):
        ca.HDRAutoencoderConfig(name="x", channels=(8, 16), num_res_blocks=1, norm_groups=4, latent_channels=2,
                                crop_size=8)


def test_config_json_round_trip():
    for cfg in ca.PRESETS.values():
        assert ca.config_from_dict(ca.config_to_dict(cfg)) == cfg
    with pytest.raises(ca.ConfigError, match="unknown"):
        ca.config_from_dict({**ca.config_to_dict(ca.get_preset("vqgan-demo")), "bogus": 1})


def test_constructors_are_keyword_only():
    with pytest.raises(TypeError):
        ca.HUWindow(-200.0, 300.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        ca.VQGAN(ca.get_preset("vqgan-demo"))  # type: ignore[misc]
    with pytest.raises(TypeError):
        ca.Discriminators(ca.get_preset("vqgan-demo"))  # type: ignore[misc]


def test_hu_window_is_invertible_inside_and_clips_outside():
    w = ca.HUWindow(lower=-1000.0, upper=1000.0)
    hu = torch.tensor([-1000.0, -500.0, 0.0, 40.0, 1000.0])
    x = w.normalize(hu)
    torch.testing.assert_close(x, torch.tensor([-1.0, -0.5, 0.0, 0.04, 1.0]))
    torch.testing.assert_close(w.denormalize(x), hu, atol=1e-3, rtol=0)  # float32: 1e-3 HU
    assert float(w.normalize(torch.tensor(3000.0))) == 1.0
    arr = np.array([-200.0, 300.0], dtype=np.float32)
    np.testing.assert_allclose(w.denormalize(w.normalize(arr)), arr, rtol=1e-6)
    assert ca.get_preset("hdr-paper").window == ca.HUWindow(lower=-1200.0, upper=1200.0)
    with pytest.raises(ca.ConfigError, match="upper > lower"):
        ca.HUWindow(lower=10.0, upper=-10.0)
