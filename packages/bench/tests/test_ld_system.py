"""LesionDiffusion model space: presets, codec, conditioning inputs, null context, run folders,
and the text-control measurement (a text-blind system must fail it)."""

from __future__ import annotations

import hashlib
import math
import shutil

import numpy as np
import pytest
import report_bbox
import torch
from ctsynth_bench.lesiondiffusion import stages as S
from ctsynth_bench.lesiondiffusion.control import held_out_boxes, measure_control
from ctsynth_bench.lesiondiffusion.presets import PresetError, get_preset
from ctsynth_bench.lesiondiffusion.system import LesionDiffusionError, LesionDiffusionSystem
from ctsynth_bench.rulesynth import load_templates

D = 32


class HashEncoder:
    """A tiny deterministic text encoder (one token per text, from a hash); stands in for MiniLM."""

    dim = D
    id = "hash-test"
    device = torch.device("cpu")

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
            rows.append(torch.randn(1, D, generator=g))
        return torch.stack(rows), torch.ones(len(texts), 1, dtype=torch.bool)


def tiny_preset():
    return get_preset(
        "demo",
        crop_size=16,
        lmnet_channels=(8, 16, 16),
        linet_channels=(8, 16, 16),
        context_dim=D,
        steps=3,
    )


def randomized(system: LesionDiffusionSystem, seed: int = 0) -> LesionDiffusionSystem:
    """MONAI zero-initialises output layers; give every weight a random value so inputs matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in (system.lmnet, system.linet):
            for prm in net.parameters():
                prm.add_(0.1 * torch.randn(prm.shape, generator=g))
    return system


def report(**kw) -> report_bbox.Report:
    base = dict(
        shape="round-like",
        organ="liver",
        lesion_location="within the parenchymal organ",
        size=(12, 12, 12),
        relationship_with_surrounding_organs="no close relationship with surrounding organs",
        surface_characteristics="well-defined margin",
        enhancement_status="non-contrast CT",
        density="hypodense",
        density_variations="homogeneous",
    )
    base.update(kw)
    return report_bbox.Report(**base)


@pytest.fixture(scope="module")
def system() -> LesionDiffusionSystem:
    return randomized(
        LesionDiffusionSystem.from_preset(tiny_preset(), seed=0, text_encoder=HashEncoder())
    )


def grid(s: int = 16):
    organs = torch.zeros(1, 1, s, s, s, dtype=torch.int64)
    organs[..., 1:15, 1:15, 1:15] = 5
    organs[..., 1:15, 1:15, 1:4] = 2
    target = organs == 5
    bbox = torch.zeros(1, 1, s, s, s, dtype=torch.bool)
    bbox[..., 5:11, 5:11, 5:11] = True
    return organs, target, bbox


def lm_prob(system, organs, target, bbox, rep, *, text=True, seed=0):
    ctx = system.tokens(rep, "mask", text=text)
    return S.lmnet_sample(
        system.lmnet,
        preset=system.preset,
        organs=organs,
        target=target.float(),
        bbox=bbox.float(),
        context=ctx,
        noise_generator=torch.Generator().manual_seed(seed),
    )


def test_preset_lookup_errors_and_spacing():
    with pytest.raises(PresetError, match="did you mean 'demo'"):
        get_preset("dmeo")
    with pytest.raises(PresetError, match="allowed"):
        get_preset("demo", crop=3)
    p = get_preset("demo")
    assert p.model_spacing((5, 5, 5)) == p.base_spacing_mm
    assert p.model_spacing((60, 20, 20)) == pytest.approx(60 / (p.box_fill * p.crop_size))
    paper = get_preset("paper")
    assert (paper.crop_size, paper.vqgan_codes, paper.steps, paper.guidance, paper.schedule) == (
        128,
        2048,
        200,
        2.5,
        "cosine",
    )


def test_space_to_depth_codec_is_lossless_in_window():
    codec = S.SpaceToDepthCodec(window=(-200.0, 300.0))
    hu = torch.empty(2, 1, 8, 8, 8).uniform_(-200, 300, generator=torch.Generator().manual_seed(0))
    z = codec.encode(hu)
    assert z.shape == (2, 8, 4, 4, 4)
    assert torch.allclose(codec.decode(z), hu, atol=1e-3)
    assert float(codec.decode(codec.encode(torch.full((1, 1, 2, 2, 2), -900.0))).max()) == -200.0


def test_every_lmnet_input_changes_the_output(system):
    organs, target, bbox = grid()
    rep = report()
    base = lm_prob(system, organs, target, bbox, rep)
    organs2 = organs.clone()
    organs2[..., 1:15, 10:15, :] = 3
    target2 = target.clone()
    target2[..., :, :, 8:] = False
    bbox2 = torch.zeros_like(bbox)
    bbox2[..., 4:12, 6:10, 5:11] = True
    for name, out in (
        ("text", lm_prob(system, organs, target, bbox, report(shape="irregular"))),
        ("organ map", lm_prob(system, organs2, target, bbox, rep)),
        ("target organ", lm_prob(system, organs, target2, bbox, rep)),
        ("bbox", lm_prob(system, organs, target, bbox2, rep)),
        ("null context", lm_prob(system, organs, target, bbox, rep, text=False)),
    ):
        assert (out - base).abs().max() > 1e-3, f"changing the {name} did not change LMNet's output"
    assert (
        float(base[~S.box_region(bbox.float()).bool()].abs().max()) == 0.0
    )  # nothing outside the box


def test_sample_mask_stays_in_box_and_is_seeded(system):
    organs, target, bbox = grid()
    m1 = system.sample_mask(
        organs=organs,
        target_organ=target,
        bbox=bbox,
        report=report(),
        generator=torch.Generator().manual_seed(3),
    )
    m2 = system.sample_mask(
        organs=organs,
        target_organ=target,
        bbox=bbox,
        report=report(),
        generator=torch.Generator().manual_seed(3),
    )
    assert m1.dtype == torch.uint8 and m1.shape == (1, 1, 16, 16, 16) and m1.any()
    assert torch.equal(m1, m2)
    assert not m1.bool()[~S.box_region(bbox.float()).bool()].any()
    with pytest.raises(LesionDiffusionError, match="bbox must be a tensor"):
        system.sample_mask(
            organs=organs,
            target_organ=target,
            bbox=bbox[..., :8],
            report=report(),
            generator=torch.Generator(),
        )


def test_every_linet_input_changes_the_output(system):
    g = torch.Generator().manual_seed(0)
    ct = 40 + 10 * torch.randn(1, 1, 16, 16, 16, generator=g)
    mask = torch.zeros(1, 1, 16, 16, 16, dtype=torch.uint8)
    mask[..., 6:10, 6:10, 6:10] = 1

    def run(rep=None, m=mask, c=ct, text=True):
        return system.inpaint(
            ct=c,
            mask=m,
            report=rep or report(),
            generator=torch.Generator().manual_seed(1),
            text=text,
        )

    base = run()
    foot = torch.zeros_like(mask, dtype=torch.bool)
    foot[..., 6:10, 6:10, 6:10] = True
    assert torch.equal(base[~foot], ct[~foot])  # untouched outside the latent footprint
    mask2 = torch.zeros_like(mask)
    mask2[..., 4:12, 6:10, 6:10] = 1
    ct2 = ct.clone()
    ct2[..., :4, :, :] += 100
    for name, out in (
        ("text", run(report(density="hyperdense"))),
        ("mask", run(m=mask2)),
        ("ct outside the mask", run(c=ct2)),
        ("null context", run(text=False)),
    ):
        assert (out[foot] - base[foot]).abs().max() > 1e-2, (
            f"changing the {name} did not change LINet's output"
        )


def test_system_round_trips_through_a_run_folder(system, tmp_path):
    system.codec.scale_factor = 2.0
    system.save(tmp_path / "run")
    loaded = LesionDiffusionSystem.load(tmp_path / "run", text_encoder=HashEncoder())
    assert loaded.run_dir == tmp_path / "run" and loaded.preset == system.preset
    assert loaded.codec.scale_factor == 2.0
    organs, target, bbox = grid()
    a = lm_prob(system, organs, target, bbox, report())
    b = lm_prob(loaded, organs, target, bbox, report())
    assert torch.equal(a, b)
    with pytest.raises(LesionDiffusionError, match="not a LesionDiffusion run folder"):
        LesionDiffusionSystem.load(tmp_path)


def test_stage_losses_train_both_networks(system):
    p = system.preset
    organs, target, bbox = grid()
    mask = (bbox & target).float()
    batch = {
        "organs": organs.repeat(2, 1, 1, 1, 1),
        "target": target.float().repeat(2, 1, 1, 1, 1),
        "bbox": bbox.float().repeat(2, 1, 1, 1, 1),
        "mask": mask.repeat(2, 1, 1, 1, 1),
        "ct": torch.full((2, 1, 16, 16, 16), 50.0),
    }
    ctx = torch.randn(2, 8, D)
    sch = S.diffusion_config(p).ddpm()
    for net, fn in (
        (
            system.lmnet,
            lambda n: S.lmnet_stage_loss(
                n, batch, ctx, preset=p, scheduler=sch, generator=torch.Generator().manual_seed(0)
            ),
        ),
        (
            system.linet,
            lambda n: S.linet_stage_loss(
                n,
                batch,
                ctx,
                preset=p,
                codec=system.codec,
                scheduler=sch,
                generator=torch.Generator().manual_seed(0),
            ),
        ),
    ):
        net.zero_grad()
        loss = fn(net)
        loss.backward()
        assert torch.isfinite(loss)
        assert net.context_mlp[0].weight.grad.abs().sum() > 0
        net.zero_grad()


def test_token_centring_keeps_null_rows_zero_and_one_slot_moves_the_embedding():
    """The timestep path sees tokens minus the per-slot training mean; a shared component of
    every token (what made the first MLP saturate) cancels, one changed slot still counts."""
    net = S.build_lmnet(get_preset("demo"))
    g = torch.Generator().manual_seed(0)
    common = 20.0 * torch.randn(1, 8, 384, generator=g)  # large part shared by every report
    train = common + 0.3 * torch.randn(50, 8, 384, generator=g)
    train[::7] = 0  # crops without a report (null rows) are not part of the mean
    net.set_token_mean(train)
    torch.testing.assert_close(net.token_mean, train[train.flatten(1).abs().amax(1) > 0].mean(0))
    assert "token_mean" in net.state_dict()  # saved and loaded with the weights
    a = common[0] + 0.3 * torch.randn(8, 384, generator=g)
    b = a.clone()
    b[0] += 0.7 * torch.randn(384, generator=g)  # only the first attribute differs
    c = net.centred_context(torch.stack([a, b, torch.zeros(8, 384)]))
    assert c[2].abs().max() == 0  # the null context stays null
    assert c[0].abs().mean() < 1.0 < common.abs().mean()  # the shared part is gone
    with torch.no_grad():
        e = net.context_mlp(c.flatten(1))
        h = net.context_mlp[1](net.context_mlp[0](c.flatten(1)))
    assert (e[0] - e[1]).norm() > 0.05 * e[0].norm()
    assert 0.2 < float((h[:2] > 0).float().mean()) < 0.8  # LayerNorm: units neither all on nor off
    with pytest.raises(ValueError, match="tokens must be"):
        net.set_token_mean(torch.zeros(3, 7, 384))


def test_independent_crops_render_density_independently_of_shape():
    from ctsynth_bench.lesiondiffusion.data import independent_crops

    p = get_preset("demo")
    crops = independent_crops(load_templates(["abdomen"]), p, 12, seed=5)
    assert crops.ct.shape == (12, 32, 32, 32)
    assert all((crops.mask[i] <= crops.bbox[i]).all() for i in range(12))
    level = {"hypo": [], "iso": [], "hyper": []}
    for i, meta in enumerate(crops.meta):
        level[meta["density"]].append(meta["level_hu"] - meta["organ_hu"])
        assert crops.image_attrs[i]["density"].startswith(meta["density"])
        assert crops.mask_attrs[i]["shape"] in ("round-like", "irregular")
    assert max(level["hypo"], default=-99) < -10 and min(level["hyper"], default=99) > 10
    assert len({(m["shape"], m["density"]) for m in crops.meta}) >= 4  # not tied to each other
    assert np.isfinite(crops.spacing).all()


def test_held_out_boxes_are_seeded_and_inside_their_organ():
    p = tiny_preset()
    tmpl = load_templates(["abdomen"])
    a = held_out_boxes(tmpl, p, 4, seed=0)
    b = held_out_boxes(tmpl, p, 4, seed=0)
    c = held_out_boxes(tmpl, p, 4, seed=1)
    assert all(
        torch.equal(x.ct, y.ct) and torch.equal(x.bbox, y.bbox) for x, y in zip(a, b, strict=True)
    )
    assert not all(torch.equal(x.ct, y.ct) for x, y in zip(a, c, strict=True))
    for box in a:
        assert box.ct.shape == (1, 1, 16, 16, 16)
        assert float(box.target[box.bbox].float().mean()) > 0.9
        assert box.report.organ in ("liver", "kidney", "pancreas")


def test_a_text_blind_system_fails_the_control_checks():
    system = randomized(
        LesionDiffusionSystem.from_preset(tiny_preset(), seed=0, text_encoder=HashEncoder())
    )
    system.trained_with_text = False  # every prompt becomes the null context
    res = measure_control(system, n=4, seed=0, steps=2, templates=load_templates(["abdomen"]))
    assert res.sphericity_gap == 0.0 and res.shape_p == 1.0 and not res.shape_passes
    assert res.pair_fractions == {"hypo<iso": 0.0, "iso<hyper": 0.0, "hypo<hyper": 0.0}
    assert not res.density_passes
    # the ablation arms draw independent noise, so they really differ from each other
    assert any(v != 0 for v in res.per_case["threshold_variants"]["volume"]["null_diff"])
    assert math.isfinite(res.size_within_30)
    d = res.to_dict()
    assert {"shape_passes", "density_passes", "size_passes", "ablation_holds"} <= set(d)


def test_codec_metrics_and_vqgan_stage_record_the_comparison(tmp_path):
    import json

    from ctsynth_bench.lesiondiffusion.codec_stage import (
        baseline_roundtrip,
        evaluate_codec,
        train_vqgan,
    )
    from ctsynth_bench.lesiondiffusion.data import independent_crops

    p = get_preset("demo", batch_size=2, vqgan_channels=(8, 8), vqgan_codes=16)
    crops = independent_crops(load_templates(["abdomen"]), p, 6, seed=3)
    exact = evaluate_codec(lambda hu: hu.clone(), crops, window=p.hu_window)
    base = evaluate_codec(baseline_roundtrip, crops, window=p.hu_window)
    s2d = S.SpaceToDepthCodec(window=p.hu_window)
    lossless = evaluate_codec(lambda hu: s2d.decode(s2d.encode(hu)), crops, window=p.hu_window)
    assert exact["contrast_error_hu"] == 0.0 and exact["ssim"] > 0.999
    assert lossless["contrast_error_hu"] < 0.01 and lossless["psnr"] > 60
    assert base["psnr"] < lossless["psnr"] and base["ssim"] < lossless["ssim"]
    assert base["lesions"] == 6
    res = train_vqgan(
        crops.subset(range(4)), crops.subset(range(4, 6)), preset=p, out=tmp_path, max_steps=2
    )
    saved = json.loads((tmp_path / "vqgan" / "metrics.json").read_text())
    assert saved["steps"] == 2 and set(saved) >= {"vqgan", "baseline_2x", "passes"}
    assert (
        res["passes"] is False
    )  # two steps cannot beat the baseline; the verdict is computed, not assumed


def test_train_system_in_parallel_processes_equals_one_after_the_other(tmp_path):
    """``parallel=True`` trains LMNet and LINet in two spawned one-thread processes; the weights
    are those of training them in this process one after the other (also one thread)."""
    from ctsynth_bench.lesiondiffusion.training import train_system
    from safetensors.torch import load_file

    p = get_preset(
        "demo", crop_size=16, lmnet_channels=(8, 16, 16), linet_channels=(8, 16, 16), batch_size=2
    )
    kw = dict(preset=p, data_dir=None, stages=("lmnet", "linet"), max_steps=3, independent=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = train_system(out=tmp_path / "seq", progress=False, **kw)
    finally:
        torch.set_num_threads(threads)
    (tmp_path / "par").mkdir()
    for name in ("crops.npz", "crops.json"):  # the crops are reused on resume
        shutil.copy(tmp_path / "seq" / name, tmp_path / "par" / name)
    par = train_system(out=tmp_path / "par", progress=False, parallel=True, resume=True, **kw)
    for rep in (seq, par):
        assert {k: v["steps"] for k, v in rep["stages"].items()} == {"lmnet": 3, "linet": 3}
    for stage in ("lmnet", "linet"):
        a = load_file(str(tmp_path / "seq" / stage / "ema.safetensors"))
        b = load_file(str(tmp_path / "par" / stage / "ema.safetensors"))
        assert a["token_mean"].abs().sum() > 0  # the tokens' mean went in with the weights
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-4)  # float order only
    system = LesionDiffusionSystem.load(tmp_path / "par")
    assert system.lmnet.token_mean.abs().sum() > 0


def test_volume_binarize_takes_the_highest_voxels_when_the_output_stays_below_the_sweep():
    """A tiny box whose LMNet output never reaches 0.3: the mask is the target volume's worth of the
    highest voxels (one component), not empty; an all-zero output stays empty (the caller retries)."""
    prob = torch.zeros(1, 1, 16, 16, 16)
    g = np.indices((16, 16, 16)) - 8.0
    blob = torch.from_numpy(np.exp(-(g**2).sum(0) / 4.0)).float() * 0.25  # peak 0.25 < 0.3
    prob[0, 0] = blob
    prob[0, 0, 1, 1, 1] = 0.2  # a far-away high voxel: not part of the largest component
    m = S.binarize(prob, 19.0, "volume")[0, 0].numpy().astype(bool)
    assert 10 <= m.sum() <= 19 and m[8, 8, 8] and not m[1, 1, 1]
    assert S.binarize(prob, 19.0, 0.5).sum() == 0  # a fixed threshold keeps its meaning
    assert S.binarize(torch.zeros(1, 1, 8, 8, 8), 5.0, "volume").sum() == 0
