"""The shipped GuideGen demo weights still place tumours where the prompt says.

Ten prompts (two per site, counts 1 and 2), the fast sampler with the shipped guidance, and the
same prompts with the text removed (the null prompt). The shipped weights must hit the prompted
organ far more often with the text than without it, and make larger tumours for ``large``.
"""

from __future__ import annotations

import numpy as np
import torch
from ctsynth_bench.guidegen.control import score_maps
from ctsynth_bench.guidegen.pipeline import encode, generate
from ctsynth_bench.guidegen.prompts import SITES, sample_fields
from ctsynth_bench.guidegen.system import load_system, shipped_dir

#: Measured on the shipped weights when they were made: 0.9 with the text, 0.1 without it; 9 of
#: the 10 maps have a tumour (the report: 0.97 of 40).
SITE_MIN = 0.8
MARGIN_MIN = 0.5
TUMOUR_RATE_MIN = 0.9
#: Size: a ``large`` sample has the bigger tumours in 0.90 of pairs in the report (0.5 = the size
#: is ignored, as it was by the TCSS shipped before the field probe: 0.58).
SIZE_ORDER_MIN = 0.75
#: Count: with the count guidance 0.90 of the report's 40 prompts match (0.40 without it); on
#: this test's 24 prompts 0.96 with it and 0.54 without, when the guidance was made.
COUNT_MIN = 0.7
COUNT_GAIN_MIN = 0.2
#: CT stages, measured on the shipped weights when they were made (the test's own cases):
#: autoencoder / baseline error 0.65; liver median HU in range 6 of 6, lung 4 of 6 (the weak
#: organ, see the model card's shortfalls); segmenter Dice liver 0.85; liver -> lung -591 HU.
AE_RATIO_MAX = 0.8
LIVER_IN_RANGE_MIN = 0.8
LUNG_IN_RANGE_MIN = 0.5
DICE_MIN = 0.6
LIVER_TO_LUNG_DROP_MIN = 300.0


def test_shipped_files_are_small() -> None:
    files = [f for f in shipped_dir().rglob("*") if f.is_file()]
    assert any(f.name.endswith(".safetensors") for f in files)
    assert all(f.stat().st_size < 4_000_000 for f in files)
    assert (shipped_dir() / "README.md").exists()


def test_shipped_weights_follow_the_prompt() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    system = load_system(stages=("tcss",))
    rng = np.random.default_rng(2024)
    fields = [sample_fields(rng, site=s, count=c) for s in SITES for c in (1, 2)]
    tok, mask = encode(system, [f.text for f in fields], len(fields))
    with_text = generate(
        system, tok, mask, with_ct=False, generator=torch.Generator().manual_seed(0)
    )
    tok0, mask0 = encode(system, None, len(fields))
    no_text = generate(
        system, tok0, mask0, with_ct=False, generator=torch.Generator().manual_seed(0)
    )
    hit = score_maps([m.numpy() for m in with_text.labels], fields)
    chance = score_maps([m.numpy() for m in no_text.labels], fields)
    assert hit.tumour_rate >= TUMOUR_RATE_MIN, hit
    assert hit.site_rate >= SITE_MIN, (hit, chance)
    assert hit.site_rate - chance.site_rate >= MARGIN_MIN, (hit, chance)


def test_shipped_weights_follow_the_prompted_size() -> None:
    """Liver tumours: 8 ``small`` and 8 ``large`` prompts, otherwise alike; large ones come out bigger."""
    from ctsynth_bench.guidegen.control import size_order

    torch.set_num_threads(min(2, torch.get_num_threads()))
    system = load_system(stages=("tcss",))
    rng = np.random.default_rng(7)
    fields = [
        sample_fields(rng, site="liver", count=1, size=z)
        for z in ("small", "large")
        for _ in range(8)
    ]
    tok, mask = encode(system, [f.text for f in fields], len(fields))
    maps = generate(system, tok, mask, with_ct=False, generator=torch.Generator().manual_seed(0))
    order = size_order([m.numpy() for m in maps.labels], fields)
    assert order["order_rate"] >= SIZE_ORDER_MIN, order
    assert order["large_voxels"] > order["small_voxels"], order


def test_shipped_weights_follow_the_prompted_count() -> None:
    """Prompted counts 1, 2 and 3 (each site's allowed ones): connected tumour pieces, by scipy.

    The count guidance (the preset's ``count_weight``) must bring the count match to the issue's
    70 %, and it must be what does so: the same prompts and draws without it match far less often.
    """
    from ctsynth_bench.guidegen.prompts import COUNTS

    torch.set_num_threads(min(2, torch.get_num_threads()))
    system = load_system(stages=("tcss",))
    rng = np.random.default_rng(11)
    fields = [sample_fields(rng, site=s, count=c) for s in SITES for c in COUNTS[s] for _ in (0, 1)]
    tok, mask = encode(system, [f.text for f in fields], len(fields))
    counts = [f.count for f in fields]

    def rate(weight: float) -> float:
        g = torch.Generator().manual_seed(0)
        maps = generate(
            system, tok, mask, with_ct=False, generator=g, counts=counts, count_weight=weight
        )
        return score_maps([m.numpy() for m in maps.labels], fields).count_rate

    guided, plain = rate(system.preset.count_weight), rate(0.0)
    assert guided >= COUNT_MIN, (guided, plain)
    assert guided - plain >= COUNT_GAIN_MIN, (guided, plain)


def _demo_cases(n: int, seed: int) -> list:
    from ctsynth_bench.guidegen.data import load_gg_templates, make_case

    temps = load_gg_templates()
    return [make_case(temps, seed, i, with_ct=True) for i in range(n)]


def test_shipped_autoencoder_beats_the_non_learned_baseline() -> None:
    """Held-out demo CTs (a seed the CT stages never saw): HU error below area-down/trilinear-up."""
    from ctsynth_bench.guidegen.stages import autoencode_error

    torch.set_num_threads(min(2, torch.get_num_threads()))
    system = load_system(stages=("tcss", "autoencoder"))
    cases = _demo_cases(12, seed=4242)
    ct = torch.from_numpy(np.stack([c.ct for c in cases])[:, None].astype(np.float32))
    lab = torch.from_numpy(np.stack([c.labels for c in cases])[:, None].astype(np.int64))
    err = autoencode_error(system.autoencoder, ct, lab)
    assert err["autoencoder_mae_hu"] < AE_RATIO_MAX * err["baseline_mae_hu"], err


def test_shipped_ct_follows_its_label_map() -> None:
    """Organ HU in real ranges, the real-CT segmenter finds the organs, and the map steers the CT."""
    from ctsynth_bench.guidegen._labels import NUM_CLASSES, class_id
    from ctsynth_bench.guidegen.control import organ_hu
    from ctsynth_bench.guidegen.pipeline import labels_to_ct
    from ctsynth_bench.guidegen.stages import labels_to_ct_grid
    from ctsynth_bench.segment import dice_per_class, load_segmenter, predict

    torch.set_num_threads(min(2, torch.get_num_threads()))
    system = load_system()
    assert system.has_ct
    cases = _demo_cases(6, seed=777)
    lab = torch.from_numpy(np.stack([c.labels for c in cases])[:, None].astype(np.int64))
    tok, _ = encode(system, [c.fields.text for c in cases], len(cases))
    ct = labels_to_ct(system, lab, tok, generator=torch.Generator().manual_seed(0))
    lab_ct = labels_to_ct_grid(lab, ct.shape[-1])[:, 0]
    inside = {}
    for c, m in zip(ct.numpy(), lab_ct.numpy(), strict=True):
        for organ, (_, ok) in organ_hu(c, m).items():
            inside.setdefault(organ, []).append(ok)
    assert np.mean(inside["liver"]) >= LIVER_IN_RANGE_MIN, inside
    assert np.mean(inside["lung"]) >= LUNG_IN_RANGE_MIN, inside
    seg = load_segmenter(shipped_dir() / "segmenter")
    dice = dice_per_class(predict(seg, ct[:, None]), lab_ct, num_classes=NUM_CLASSES)
    assert dice[class_id("liver") - 1] >= DICE_MIN, dice
    # the label map steers the CT: the same noise with the liver turned into lung changes the
    # HU where the liver was, and the segmenter stops finding liver there
    swapped = lab.clone()
    swapped[swapped == class_id("liver")] = class_id("lung")
    ct2 = labels_to_ct(system, swapped, tok, generator=torch.Generator().manual_seed(0))
    liver = lab_ct == class_id("liver")
    assert float((ct2 - ct)[liver].mean()) < -LIVER_TO_LUNG_DROP_MIN


def test_shipped_generator_blank_ct_is_redrawn_with_a_body() -> None:
    """A real failure of the shipped CT generator: the first ten real maps of ``bench eval
    guidegen`` (seed 1), drawn together with its seed, give one CT that is air where its map has
    organs (case 5). ``redraw_blank`` draws that one again from new noise and it comes out with a
    body; the other nine are the same as without redraws."""
    from ctsynth_bench.eval.guidegen import REAL_SEED
    from ctsynth_bench.guidegen.control import blank_ct
    from ctsynth_bench.guidegen.pipeline import labels_to_ct_checked
    from ctsynth_bench.guidegen.stages import labels_to_ct_grid

    torch.set_num_threads(min(2, torch.get_num_threads()))
    system = load_system()
    cases = _demo_cases(10, seed=REAL_SEED + 1)
    lab = torch.from_numpy(np.stack([c.labels for c in cases])[:, None].astype(np.int64))
    tok, _ = encode(system, [c.fields.text for c in cases], len(cases))
    ct, blank, redrawn = labels_to_ct_checked(
        system, lab, tok, generator=torch.Generator().manual_seed(31), redraw_blank=3
    )
    assert redrawn[:1] == [5] and set(redrawn) == {5} and blank == []
    lab_ct = labels_to_ct_grid(lab, system.preset.ct_size)[:, 0].numpy()
    assert not blank_ct(ct.numpy(), lab_ct).any()
    body = (ct[5] > -900).float().mean()
    assert body > 0.2, body  # a torso, not a few voxels
