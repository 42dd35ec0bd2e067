"""GuideGen pipeline on an untrained system: geometry and layout of what synth writes, resume,
and that the prompt (and its removal) changes the output."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ctsynth_bench.guidegen.pipeline import encode, generate, labels_to_ct, synthesize_to_folder
from ctsynth_bench.guidegen.presets import get_preset
from ctsynth_bench.guidegen.system import load_system, ship_checkpoint, write_manifest

PROMPT_A = (
    "The patient is a 63-year-old white male. In this imaging, the patient's condition is described as "
    "liver cancer, T2 N0 M0, 2 primary tumours, small."
)
PROMPT_B = (
    "The patient is a 41-year-old asian female. In this imaging, the patient's condition is described as "
    "lung cancer, T4 N1 M1, 1 primary tumour, large."
)


def _wake(module: torch.nn.Module, seed: int) -> None:
    """Give zero-initialised layers (MONAI's attention outputs) random weights, so text reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim > 1 and float(p.abs().max()) == 0.0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import ct_autoencoder as ca
    from cat_diffusion import SemanticSynthesizer, save_checkpoint
    from ctsynth_bench.guidegen.stages import make_autoencoder, make_generator

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ggrun")
    preset = get_preset("demo", gen_steps=3)
    tcss = SemanticSynthesizer(config=preset.tcss)
    _wake(tcss, 1)
    save_checkpoint(tcss, root / "tcss_full")
    ship_checkpoint(root / "tcss_full", root / "tcss", max_bytes=1_000_000)  # sharded, as shipped
    ae = make_autoencoder(preset)
    ca.save_autoencoder(ae, root / "autoencoder")
    gen = make_generator(preset)
    _wake(gen, 2)
    gen.save(root / "generator")
    write_manifest(root, preset)
    return root


def test_shards_load_and_are_small(run_dir: Path) -> None:
    shards = sorted((run_dir / "tcss").glob("model-*.safetensors"))
    assert len(shards) > 1 and all(s.stat().st_size < 1_100_000 for s in shards)
    s = load_system(run_dir)
    from cat_diffusion import load_checkpoint

    full = load_checkpoint(run_dir / "tcss_full")
    for (k, a), (_, b) in zip(
        sorted(s.tcss.state_dict().items()), sorted(full.state_dict().items()), strict=True
    ):
        assert torch.equal(a, b), k


def test_synth_writes_nnunet_layout_and_resumes(run_dir: Path, tmp_path: Path) -> None:
    s = load_system(run_dir)
    out = tmp_path / "synth"
    names = synthesize_to_folder(s, [PROMPT_A, PROMPT_B], out, n=2, seed=3, steps=4)
    assert names == ["gg_000_000", "gg_000_001", "gg_001_000", "gg_001_001"]
    for name in names:
        img = nib.load(out / "imagesTr" / f"{name}_0000.nii.gz")
        lab = nib.load(out / "labelsTr" / f"{name}.nii.gz")
        assert img.shape == lab.shape == (32, 32, 32)
        assert np.allclose(img.header.get_zooms(), (12.0, 12.0, 12.0)) and np.allclose(
            img.affine, lab.affine
        )
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert int(np.asarray(lab.dataobj).max()) <= 20
        meta = json.loads((out / "meta" / f"{name}.json").read_text())
        assert (
            meta["prompt"] in (PROMPT_A, PROMPT_B) and meta["seed"] == 3 and meta["tcss_calls"] == 4
        )
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"]["tumour"] == 20 and ds["numTraining"] == 4
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    synthesize_to_folder(s, [PROMPT_A, PROMPT_B], out, n=2, seed=3, steps=4)
    assert {
        p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")
    } == before  # finished chunks are skipped


def test_prompt_and_its_removal_change_the_output(run_dir: Path) -> None:
    s = load_system(run_dir)

    def labels(prompt: str | None) -> torch.Tensor:
        tok, mask = encode(s, None if prompt is None else [prompt] * 2, 2)
        return generate(
            s, tok, mask, steps=4, with_ct=False, generator=torch.Generator().manual_seed(0)
        ).labels

    a, b, none = labels(PROMPT_A), labels(PROMPT_B), labels(None)
    assert torch.equal(a, labels(PROMPT_A))  # same prompt, same seed: same maps
    assert not torch.equal(a, b) and not torch.equal(a, none)


def test_label_map_changes_the_ct(run_dir: Path) -> None:
    s = load_system(run_dir)
    tok, _ = encode(s, [PROMPT_A], 1)
    a = torch.zeros(1, 1, 16, 16, 16, dtype=torch.long)
    b = a.clone()
    b[..., 4:12, 4:12, 4:12] = 3  # a liver block
    ct_a = labels_to_ct(s, a, tok, generator=torch.Generator().manual_seed(0))
    ct_b = labels_to_ct(s, b, tok, generator=torch.Generator().manual_seed(0))
    assert ct_a.shape == (1, 32, 32, 32)
    assert torch.equal(ct_a, labels_to_ct(s, a, tok, generator=torch.Generator().manual_seed(0)))
    diff = (ct_a - ct_b).abs()[0]
    assert float(diff[8:24, 8:24, 8:24].mean()) > float(
        diff[:4, :4, :4].mean()
    )  # changed where the map changed


def test_tiled_decode_matches_whole_volume_decode(run_dir: Path) -> None:
    """Volumes larger than the preset's decode tile are decoded tile by tile with the same result."""
    s = load_system(run_dir)
    tok, _ = encode(s, [PROMPT_A], 1)
    lab = torch.zeros(1, 1, 16, 16, 16, dtype=torch.long)
    lab[..., 3:13, 4:12, 2:14] = 3
    whole = labels_to_ct(s, lab, tok, generator=torch.Generator().manual_seed(0), tile=0)
    tiled = labels_to_ct(s, lab, tok, generator=torch.Generator().manual_seed(0), tile=24)
    assert tiled.shape == whole.shape
    # the decoder's per-voxel norm makes tiles agree; only the receptive field at tile edges
    # differs (measured 0.2 HU mean against a CT std of 340 HU)
    assert float((tiled - whole).abs().mean()) < 1.0, float((tiled - whole).abs().mean())
    assert float((tiled - whole).abs().mean()) < 0.01 * float(whole.std())
    assert s.preset.decode_tile == 0 and get_preset("paper").decode_tile == 128


def test_chunked_tcss_calls_give_the_same_maps(run_dir: Path) -> None:
    """``tcss_chunk`` (the paper preset's memory saver) splits each guided call, not the result."""
    from ctsynth_bench.guidegen.stages import GuidedTCSS, sample_label_maps

    s = load_system(run_dir)
    tok, mask = encode(s, [PROMPT_A, PROMPT_B, PROMPT_A], 3)
    levels = s.tcss.encode_context(tok, mask)
    null_t, null_m = encode(s, None, 3)
    null = s.tcss.encode_context(null_t, null_m)
    x = (
        torch.nn.functional.one_hot(torch.randint(0, 21, (3, 16, 16, 16)), 21)
        .movedim(-1, 1)
        .float()
    )
    t = torch.tensor([40, 90, 150])
    whole = GuidedTCSS(s.tcss, levels, null, 2.0)(x, t)
    for chunk in (1, 2, 4, 6):
        part = GuidedTCSS(s.tcss, levels, null, 2.0, chunk=chunk)(x, t)
        assert torch.allclose(part, whole, atol=1e-4), (chunk, float((part - whole).abs().max()))

    def maps(chunk: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(5)
        return sample_label_maps(s.tcss, tok, mask, guidance=2.0, steps=4, generator=g, chunk=chunk)

    (a, calls_a), (b, calls_b) = maps(0), maps(1)
    assert torch.equal(a, b) and calls_a == calls_b == 4
    assert get_preset("paper").tcss_chunk == 1 and s.preset.tcss_chunk == 0
    with pytest.raises(ValueError, match="chunk must be >= 0"):
        GuidedTCSS(s.tcss, levels, null, 2.0, chunk=-1)


def test_count_guidance_changes_the_maps_and_not_the_null_prompt(run_dir: Path) -> None:
    s = load_system(run_dir)
    assert s.preset.count_weight > 0

    def maps(prompts: list[str] | None, counts: list[int] | None, w: float) -> torch.Tensor:
        tok, mask = encode(s, prompts, 2)
        g = torch.Generator().manual_seed(3)
        return generate(
            s, tok, mask, steps=4, with_ct=False, generator=g, counts=counts, count_weight=w
        ).labels

    off = maps([PROMPT_A] * 2, [2, 2], 0.0)
    assert torch.equal(off, maps([PROMPT_A] * 2, None, 32.0))  # no counts: no guidance
    assert not torch.equal(off, maps([PROMPT_A] * 2, [2, 2], 32.0))
    assert not torch.equal(maps([PROMPT_A] * 2, [1, 1], 32.0), maps([PROMPT_A] * 2, [3, 3], 32.0))
    null = maps(None, None, 0.0)
    assert torch.equal(null, maps(None, [2, 2], 32.0))  # text removed: nothing to steer to
    with pytest.raises(ValueError, match="counts: 1 entries for 2 prompts"):
        maps([PROMPT_A] * 2, [1], 32.0)


def test_alignment_check_reports_the_count_with_and_without_guidance(run_dir: Path) -> None:
    from ctsynth_bench.guidegen.run import _count_guidance_lines, alignment_check

    s = load_system(run_dir)
    a = alignment_check(s, n_per_site=1, n_ancestral=0, steps=3)
    assert a["count_weight"] == s.preset.count_weight > 0
    plain = a["fast_without_count_guidance"]
    assert sum(sum(row) for row in plain["count_confusion"].values()) == a["fast"]["n"] == 5
    assert "knowledge injection alone" in _count_guidance_lines(a)[0]
    s_off = load_system(run_dir)
    s_off.preset = get_preset("demo", gen_steps=3, count_weight=0.0)
    off = alignment_check(s_off, n_per_site=1, n_ancestral=0, steps=3)
    assert "fast_without_count_guidance" not in off
    assert "off" in _count_guidance_lines(off)[0]


def test_blank_cts_are_named_and_drawn_again(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CT that comes out as air where its map has organs is listed, and ``redraw_blank`` draws
    only those again (the decoder is replaced by one that answers 40 HU or air on demand)."""
    from ctsynth_bench.guidegen import pipeline

    system = load_system(run_dir)
    tok, mask = encode(system, [PROMPT_A, PROMPT_B], 2)
    sizes: list[int] = []
    air_on: set[tuple[int, int]] = set()  # (decode call, sample) pairs that come out as air

    def decode(system, z, labels, *, tile=None):
        sizes.append(len(z))
        ct = torch.full((len(z), *(system.preset.ct_size,) * 3), 40.0)
        for call, b in air_on:
            if call == len(sizes) - 1:
                ct[b] = -1024.0
        return ct

    monkeypatch.setattr(pipeline, "decode_latents", decode)

    def run(redraw: int) -> pipeline.Generated:
        sizes.clear()
        g = torch.Generator().manual_seed(0)
        return generate(system, tok, mask, generator=g, redraw_blank=redraw)

    air_on.update({(0, 1)})  # the first draw of the second case is air
    kept = run(0)
    assert kept.blank == [1] and kept.redrawn == [] and sizes == [2]
    assert float(kept.ct[1].max()) == -1024.0
    fixed = run(2)
    assert fixed.blank == [] and fixed.redrawn == [1] and sizes == [2, 1]
    assert float(fixed.ct[1].min()) == 40.0 and torch.equal(fixed.labels, kept.labels)
    air_on.update({(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)})  # every draw is air
    stuck = run(2)
    assert stuck.blank == [0, 1] and stuck.redrawn == [0, 1, 0, 1] and sizes == [2, 2, 2]
    with pytest.raises(Exception, match="redraw_blank must be >= 0"):
        run(-1)
