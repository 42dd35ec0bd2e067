from __future__ import annotations

import json
import os

import ct_autoencoder as ca
import pytest
import torch
from safetensors.torch import load_file, save_file

VQ = ca.VQGANConfig(name="t", channels=(8,), strides=(2,), num_res_layers=1, num_embeddings=16,
                    embedding_dim=3, crop_size=16)
HDR = ca.HDRAutoencoderConfig(name="t", channels=(4, 8), num_res_blocks=1, norm_groups=1, latent_channels=3,
                              num_embeddings=16, num_label_classes=10, label_embed_dim=2, crop_size=16)


def _perturbed(module: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return module


@pytest.mark.parametrize("cfg", [VQ, HDR], ids=["vqgan", "hdr"])
def test_save_load_round_trip_in_eval_mode_with_scale_factor(tmp_path, cfg, gen):
    model = _perturbed(ca.build_model(cfg), gen)
    model.scale_factor = 0.37
    folder = ca.save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    doc = json.loads((folder / "config.json").read_text())
    assert {k: doc[k] for k in ("format", "format_version", "package", "class")} == {
        "format": "ctsynth-checkpoint", "format_version": 1, "package": "ct-autoencoder",
        "class": type(model).__name__,
    }
    assert doc["config"]["scale_factor"] == 0.37
    assert model.training  # saving does not change the mode
    loaded = ca.load_checkpoint(folder)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config and loaded.scale_factor == 0.37
    x = torch.rand(1, 1, 16, 16, 16, generator=gen) * 2 - 1
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_stage_2_inputs(x), model.encode_stage_2_inputs(x), atol=0, rtol=0)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the aliases are the same functions with the same signature
    again = ca.load_autoencoder(ca.save_autoencoder(loaded, tmp_path / "again"), device="cpu")
    assert again.config == model.config


@pytest.mark.parametrize("cfg", [VQ, HDR], ids=["vqgan", "hdr"])
def test_discriminators_round_trip(tmp_path, cfg, gen):
    disc = _perturbed(ca.Discriminators(config=cfg), gen)
    loaded = ca.load_checkpoint(ca.save_checkpoint(disc, tmp_path / "disc"))
    assert isinstance(loaded, ca.Discriminators) and not loaded.training
    assert (loaded.frame is None) == isinstance(cfg, ca.VQGANConfig)
    for a, b in zip(disc.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_writes_touch_only_the_two_files_and_extra_files_are_tolerated(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "optimizer.safetensors").write_bytes(b"trainer state")
    (folder / "trainer.json").write_text('{"step": 12}')
    model = ca.build_model(VQ)
    ca.save_checkpoint(model, folder)
    ca.save_checkpoint(model, folder)  # overwrite in place
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "trainer.json",
    ]
    assert (folder / "optimizer.safetensors").read_bytes() == b"trainer state"
    assert isinstance(ca.load_checkpoint(folder), ca.VQGAN)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    folder = ca.save_checkpoint(ca.build_model(VQ), tmp_path / "c")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        ca.save_checkpoint(ca.build_model(VQ), folder)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temp files left
    ca.load_checkpoint(folder)


def test_load_rejects_foreign_and_mismatched_checkpoints_naming_the_file(tmp_path):
    with pytest.raises(ca.CheckpointError, match=r"lacks model\.safetensors"):
        ca.load_checkpoint(tmp_path)
    folder = ca.save_checkpoint(ca.build_model(VQ), tmp_path / "a")
    cfg_file = folder / "config.json"
    good = json.loads(cfg_file.read_text())
    for key, value in [("package", "lesion-inpaint"), ("format", "diffusers"), ("format_version", 2)]:
        cfg_file.write_text(json.dumps({**good, key: value}))
        with pytest.raises(ca.CheckpointError, match=rf"{cfg_file}.*not a ct-autoencoder checkpoint: {key}"):
            ca.load_checkpoint(folder)
    cfg_file.write_text(json.dumps({**good, "class": "LINet"}))
    with pytest.raises(ca.CheckpointError, match=rf"{cfg_file}: class 'LINet'"):
        ca.load_checkpoint(folder)
    cfg_file.write_text(json.dumps({**good, "class": "HDRAutoencoder"}))
    with pytest.raises(ca.CheckpointError, match="cannot take a VQGANConfig"):
        ca.load_checkpoint(folder)
    cfg_file.write_text("{not json")
    with pytest.raises(ca.CheckpointError, match="not readable JSON"):
        ca.load_checkpoint(folder)
    # config and tensors disagree: size and key mismatches both name the weights file
    cfg_file.write_text(json.dumps({**good, "config": {**good["config"], "num_embeddings": 32}}))
    with pytest.raises(ca.CheckpointError, match=r"model\.safetensors do not match VQGAN"):
        ca.load_checkpoint(folder)
    cfg_file.write_text(json.dumps(good))
    state = load_file(str(folder / "model.safetensors"))
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ca.CheckpointError, match=r"unexpected \['extra.weight'\]"):
        ca.load_checkpoint(folder)


def test_save_rejects_a_ddp_wrapper_or_a_foreign_module(tmp_path):
    with pytest.raises(ca.CheckpointError, match="takes a VQGAN, HDRAutoencoder or Discriminators"):
        ca.save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x")
    assert not (tmp_path / "x").exists()
