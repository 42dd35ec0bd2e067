from __future__ import annotations

import json

import ct_autoencoder as ca
import pytest
import torch

VQ = ca.VQGANConfig(name="t", channels=(8,), strides=(2,), num_res_layers=1, num_embeddings=16,
                    embedding_dim=3, crop_size=16)
HDR = ca.HDRAutoencoderConfig(name="t", channels=(4, 8), num_res_blocks=1, norm_groups=4, latent_channels=3,
                              num_embeddings=16, num_label_classes=10, label_embed_dim=2, crop_size=16)


@pytest.mark.parametrize("cfg", [VQ, HDR], ids=["vqgan", "hdr"])
def test_save_load_round_trip(tmp_path, cfg, gen):
    model = ca.build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    model.eval()
    folder = ca.save_autoencoder(model, tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["kind"] == type(cfg).__name__
    loaded = ca.load_autoencoder(folder)
    assert loaded.config == cfg
    x = torch.rand(1, 1, 16, 16, 16, generator=gen) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_stage_2_inputs(x), model.encode_stage_2_inputs(x), atol=0, rtol=0)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_load_errors(tmp_path):
    with pytest.raises(ca.CheckpointError, match=r"lacks model\.safetensors"):
        ca.load_autoencoder(tmp_path)
    ca.save_autoencoder(ca.build_model(VQ), tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["num_embeddings"] = 32
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ca.CheckpointError, match="do not match"):
        ca.load_autoencoder(tmp_path / "a")
