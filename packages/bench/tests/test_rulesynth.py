"""Rule-based lesion synthesizer: shapes, rendering, deformation, dataset writer, resume, CLI."""

from __future__ import annotations

import argparse
import json
import math
import os

import nibabel as nib
import numpy as np
import pytest
import report_bbox
from ctsynth_bench.rulesynth import (
    LESION_TYPES,
    SynthError,
    Template,
    estimate_noise,
    lesion_mask,
    measure_case,
    render_lesion,
    spec_from_report,
    synthesize_case,
    synthesize_dataset,
    warp,
)
from ctsynth_bench.rulesynth._deform import flip_allowed, flip_lr
from ctsynth_bench.rulesynth._rules import organ_of
from scipy import ndimage


def _ellipsoid(shape, center, radii):
    g = np.indices(shape).astype(float)
    return sum(((g[i] - center[i]) / radii[i]) ** 2 for i in range(3)) <= 1.0


def make_phantom(seed: int = 0, n: int = 56, spacing: float = 2.0) -> Template:
    """A torso-like phantom with every organ the 14 types need (TotalSegmentator v2 ids), noise std 10 HU."""
    rng = np.random.default_rng(seed)
    shape = (n, n, n)
    ct = np.full(shape, -100.0)  # fat
    org = np.zeros(shape, dtype=np.int16)
    body = _ellipsoid(shape, (n / 2, n / 2, n / 2), (n / 2 - 1, n / 2 - 3, n))
    ct[~body] = -1000.0

    def put(mask, label, hu):
        org[mask] = label
        ct[mask] = hu

    put(_ellipsoid(shape, (18, 30, 44), (11, 11, 8)), 10, -820.0)  # lung (lower lobe left id 10)
    put(_ellipsoid(shape, (38, 30, 44), (11, 11, 8)), 14, -820.0)  # lung right lower lobe
    put(_ellipsoid(shape, (38, 26, 30), (11, 12, 7)), 5, 55.0)  # liver
    put(_ellipsoid(shape, (12, 20, 28), (6, 6, 9)), 3, 30.0)  # kidney left
    put(_ellipsoid(shape, (45, 20, 24), (6, 6, 9)), 2, 30.0)  # kidney right
    put(_ellipsoid(shape, (27, 38, 22), (10, 4, 4)), 7, 40.0)  # pancreas
    # Hollow organs: wall 40 HU around fluid or gas.
    for label, centre, radii, inner_hu in ((4, (44, 34, 20), (4, 4, 5), 5.0), (21, (28, 30, 6), (7, 7, 5), 8.0),
                                           (6, (18, 32, 34), (6, 6, 5), -900.0)):
        outer = _ellipsoid(shape, centre, radii)
        inner = _ellipsoid(shape, centre, tuple(r - 1.3 for r in radii))
        put(outer, label, 40.0)
        ct[inner] = inner_hu
    # Colon and oesophagus: tubes along z with a gas lumen.
    g = np.indices(shape).astype(float)
    for label, (cx, cy), (z0, z1), r in ((20, (12, 14), (8, 24), 4.0), (15, (26, 40), (36, 54), 3.0)):
        d = np.sqrt((g[0] - cx) ** 2 + (g[1] - cy) ** 2)
        tube = (d <= r) & (g[2] >= z0) & (g[2] < z1)
        put(tube & (org == 0), label, 40.0)
        ct[tube & (d <= r - 1.3) & (org == label)] = -900.0
    ct += rng.normal(0.0, 10.0, size=shape)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    return Template(name="phantom", ct=ct.astype(np.float32), organs=org, affine=affine, spacing=(spacing,) * 3)


@pytest.fixture(scope="module")
def phantom() -> Template:
    return make_phantom()


def _report(lesion_type: str, **over: str) -> report_bbox.Report:
    """A typed report for ``lesion_type`` (its organ and first location), with ``over`` replacing values."""
    spec = report_bbox.LESION_TYPES[lesion_type]
    fields = {"shape": "round-like", "density": "hypodense lesion", "size": "12x12x12mm", "organ": spec.organ,
              "lesion location": spec.lesion_location[0],
              "relationship with surrounding organs": "no close relationship",
              "surface characteristics": "well-defined margin", "density variations": "homogeneous",
              "enhancement status": "non-contrast ct"}
    fields.update(over)
    return report_bbox.Report.from_dict({k.replace(" ", "_"): v for k, v in fields.items()})


def _spec(lesion_type: str, **over: str):
    return spec_from_report(_report(lesion_type, **over), lesion_type=lesion_type)


def test_spec_from_report_synonyms_and_sizes() -> None:
    s = _spec("liver_cancer", density="low attenuation lesion,", **{"surface characteristics": "unclear margin"})
    assert s.density == "hypo" and s.margin == "ill_defined" and s.organ == "liver"
    assert _spec("kidney_cyst", density="hypodense fluid-like lesion").density == "fluid"
    assert _spec("gallstone", **{"specific features": "calculus"}).density == "stone"
    assert _spec("colon_cancer", shape="irregular,wall thickening").shape == "wall_thickening"
    assert _spec("liver_cancer", size="8\u00d712\u00d714mm").size_mm == (8.0, 12.0, 14.0)  # Report's sizes, in mm
    assert _spec("kidney_cancer", **{"specific features": "both"}).features == ("calcified_foci", "low_density_foci")
    assert _spec("liver_cancer", **{"enhancement status": "CECT"}).enhancement == "enhanced"
    with pytest.raises(SynthError, match="did you mean 'liver_cyst'"):
        spec_from_report(_report("liver_cyst"), lesion_type="liver_cist")
    with pytest.raises(SynthError, match=r"report_bbox\.Report"):
        spec_from_report({"shape": "round-like"}, lesion_type="liver_cyst")  # type: ignore[arg-type]
    with pytest.raises(SynthError, match="needs a lesion type"):
        spec_from_report(_report("liver_cyst"))


def test_lesion_types_sizes_and_organs_come_from_report_bbox() -> None:
    """One table: the synthesizer's types and organs are report-bbox's, sizes come from the report."""
    assert LESION_TYPES == tuple(report_bbox.LESION_TYPES)
    for name, spec in report_bbox.LESION_TYPES.items():
        assert organ_of(name) == spec.organ
    rng = np.random.default_rng(0)
    report = report_bbox.sample_report(rng, lesion_type="lung_cancer")
    assert spec_from_report(report).size_mm == tuple(report.size)


def test_round_ellipsoid_volume_matches_analytic(phantom: Template) -> None:
    spec = _spec("liver_cancer", size="14x10x12mm")
    organ = phantom.organs == 5
    rng = np.random.default_rng(0)
    vols = []
    for _ in range(4):
        m = lesion_mask(spec, organ, phantom.organs == 0, phantom.spacing, np.array([38.0, 26, 30]), rng)
        assert m.sum() > 0 and not (m & ~organ).any(), "a parenchymal lesion stays inside its organ"
        vols.append(m.sum() * 8.0)
    analytic = 4.0 / 3.0 * math.pi * 7 * 5 * 6  # mm^3
    assert abs(np.mean(vols) / analytic - 1.0) < 0.15


def test_location_rules(phantom: Template) -> None:
    rng = np.random.default_rng(1)
    org = phantom.organs
    bladder = org == 21
    for shape in ("irregular wall thickening", "protrusion into the lumen"):
        spec = _spec("bladder_cancer", shape=shape, density="isodense lesion")
        m = lesion_mask(spec, bladder, org == 0, phantom.spacing, np.array([28.0, 30, 6]), rng)
        assert m.any() and not (m & ~bladder).any()
    colon = org == 20
    m = lesion_mask(_spec("colon_cancer", shape="luminal narrowing"), colon, org == 0, phantom.spacing,
                    np.array([12.0, 14, 16]), rng)
    assert m.any() and not (m & ~colon).any()
    kid = np.isin(org, (2, 3))
    spec = _spec("kidney_cancer", size="14mm", density="hypodense",
                 **{"lesion location": "protruding from the parenchymal organ"})
    assert spec.location == "protruding"
    m = lesion_mask(spec, kid, org == 0, phantom.spacing, np.array([12.0, 20, 28]), rng)
    outside = m & ~kid
    assert outside.any(), "a protruding lesion leaves the organ"
    assert not (outside & (org != 0)).any(), "but never into another organ"


def test_irregular_is_less_spherical_than_round(phantom: Template) -> None:
    from shape_metrics import sphericity

    organ = phantom.organs == 5
    rng = np.random.default_rng(2)
    sph = {}
    for shape in ("round-like", "irregular"):
        vals = []
        for _ in range(4):
            m = lesion_mask(_spec("liver_cancer", shape=shape, size="16mm"), organ, phantom.organs == 0,
                            phantom.spacing, np.array([38.0, 26, 30]), rng)
            vals.append(sphericity(m, phantom.spacing))
        sph[shape] = np.mean(vals)
    assert sph["irregular"] < sph["round-like"] - 0.05


def test_noise_estimate_white_noise() -> None:
    rng = np.random.default_rng(3)
    ct = rng.normal(40.0, 12.0, size=(40, 40, 40)).astype(np.float32)
    region = np.zeros(ct.shape, bool)
    region[5:35, 5:35, 5:35] = True
    assert abs(estimate_noise(ct, region) / 12.0 - 1.0) < 0.06


@pytest.mark.parametrize(("density", "lo", "hi"), [("hypodense fluid-like lesion", 0, 20), ("hyperdense", 300, 900),
                                                    ("low-density ground-glass opacity", -650, -350)])
def test_absolute_densities(phantom: Template, density: str, lo: float, hi: float) -> None:
    features = "calculus" if density == "hyperdense" else "none"  # a stone is a feature; its density is absolute
    spec = _spec("liver_cyst", density=density, size="14mm", **{"specific features": features})
    ct = phantom.ct.copy()
    organ = phantom.organs == 5
    m = lesion_mask(spec, organ, phantom.organs == 0, phantom.spacing, np.array([38.0, 26, 30]), np.random.default_rng(4))
    render_lesion(ct, m, spec, organ_hu=55.0, noise_std=10.0, rng=np.random.default_rng(5))
    assert lo - 5 <= ct[m].mean() <= hi + 5
    far = ~ndimage.binary_dilation(m, iterations=8)
    assert np.array_equal(ct[far], phantom.ct[far]), "voxels far from the lesion are untouched"


def test_margin_blur_and_texture(phantom: Template) -> None:
    organ = phantom.organs == 5
    res = {}
    for margin in ("well-defined margin", "ill-defined margin"):
        for var in ("homogeneous", "heterogeneous"):
            spec = _spec("liver_cancer", size="16mm", **{"surface characteristics": margin, "density variations": var})
            ct = phantom.ct.copy()
            m = lesion_mask(spec, organ, phantom.organs == 0, phantom.spacing, np.array([38.0, 26, 30]),
                            np.random.default_rng(6))
            render_lesion(ct, m, spec, organ_hu=55.0, noise_std=10.0, rng=np.random.default_rng(7))
            res[(margin, var)] = measure_case(ct, m, phantom.organs, phantom.spacing, spec).values
    assert res[("well-defined margin", "homogeneous")]["edge"] > 0.8
    assert res[("ill-defined margin", "homogeneous")]["edge"] < 0.6
    assert 0.7 < res[("well-defined margin", "homogeneous")]["std_ratio"] < 1.4
    assert res[("well-defined margin", "heterogeneous")]["std_ratio"] > 1.8
    assert -70 < res[("well-defined margin", "homogeneous")]["delta_hu"] < -20


def test_warp_identity_and_alignment(phantom: Template) -> None:
    zero = np.zeros((3, *phantom.ct.shape), np.float32)
    ct, org = warp(phantom.ct, phantom.organs, zero)
    assert np.allclose(ct, phantom.ct, atol=1e-3) and np.array_equal(org, phantom.organs)
    shift = zero.copy()
    shift[0] = 2.0  # sample 2 voxels further along x: content moves by -2
    ct2, org2 = warp(phantom.ct, phantom.organs, shift)
    assert np.array_equal(org2[:-2], phantom.organs[2:]) and np.allclose(ct2[:-2], phantom.ct[2:], atol=1e-3)
    assert not flip_allowed(phantom.organs)  # a liver is present: no situs inversus
    kidneys = np.zeros((6, 4, 4), np.int16)
    kidneys[0, 0, 0], kidneys[5, 0, 0] = 2, 3
    assert flip_allowed(kidneys)
    _, flipped = flip_lr(np.zeros(kidneys.shape, np.float32), kidneys, np.eye(4))
    assert flipped[0, 0, 0] == 2 and flipped[5, 0, 0] == 3  # kidney_right (2) mirrored to x=0 is relabelled


def test_every_type_on_phantom(phantom: Template) -> None:
    for i, t in enumerate(LESION_TYPES):
        sc = synthesize_case(phantom, t, np.random.default_rng(100 + i), deform=True)
        organ_ids = {"lung": (10, 14)}.get(organ_of(t))
        assert sc.lesion.sum() > 0, t
        lesion_organs = set(np.unique(sc.organs[sc.lesion > 0]).tolist())
        assert 0 not in lesion_organs, f"{t}: lesion voxels must be labelled as an organ in the organ map"
        if organ_ids:
            assert lesion_organs <= set(organ_ids)
        # The report describes the mask it is paired with: size = the mask's extent in mm.
        idx = np.argwhere(sc.lesion > 0)
        extent = (idx.max(0) - idx.min(0) + 1) * np.asarray(phantom.spacing)
        np.testing.assert_allclose(sc.report["size"], extent, atol=0.05, err_msg=t)
        assert sc.synthesis["requested_size_mm"] is not None
        fields = {k: v for k, v in sc.report.items() if k != "text"}
        assert sc.report["text"] == report_bbox.Report.from_dict(fields).text(), t


def _read_case(root, case):
    return (np.asarray(nib.load(root / "imagesTr" / f"{case}_0000.nii.gz").dataobj),
            np.asarray(nib.load(root / "labelsTr" / f"{case}.nii.gz").dataobj))


def test_dataset_layout_and_resume(tmp_path, phantom: Template) -> None:
    types = ["liver_cyst", "kidney_stone", "colon_cancer"]
    full = tmp_path / "full"
    synthesize_dataset(full, n=4, templates=[phantom], types=types, seed=5)
    assert sorted(p.name for p in (full / "imagesTr").iterdir()) == [f"synth_{i:05d}_0000.nii.gz" for i in range(4)]
    meta = json.loads((full / "reports" / "synth_00001.json").read_text())
    assert meta["lesion_type"] == "kidney_stone" and "report" in meta
    ds = json.loads((full / "dataset.json").read_text())
    assert ds["numTraining"] == 4 and ds["labels"] == {"background": 0, "lesion": 1}
    umask = os.umask(0)
    os.umask(umask)
    for f in (full / "imagesTr" / "synth_00000_0000.nii.gz", full / "reports" / "synth_00000.json"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, "files get the umask's mode, not mkstemp's 0600"
    img = nib.load(full / "imagesTr" / "synth_00000_0000.nii.gz")
    assert np.allclose(img.affine, phantom.affine)
    # Interrupted run: 2 finished cases, and case 2 killed after its CT was written (no report).
    part = tmp_path / "part"
    synthesize_dataset(part, n=3, templates=[phantom], types=types, seed=5)
    (part / "reports" / "synth_00002.json").unlink()
    (part / "labelsTr" / "synth_00002.nii.gz").unlink()
    (part / "labelsTr" / ".synth_00002.nii.abc123.nii.gz").write_bytes(b"half-written")
    summary = synthesize_dataset(part, n=4, templates=[phantom], types=types, seed=5)
    assert summary.skipped_existing == 2 and summary.written == 2
    for i in range(4):
        a, b = _read_case(full, f"synth_{i:05d}"), _read_case(part, f"synth_{i:05d}")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not [p for p in part.rglob(".*") if p.is_file()], "temporary files of the killed run are removed"
    with pytest.raises(SynthError, match="other settings"):
        synthesize_dataset(part, n=4, templates=[phantom], types=types, seed=6)


def test_bad_inputs(tmp_path, phantom: Template) -> None:
    with pytest.raises(SynthError, match="whole number from 1"):
        synthesize_dataset(tmp_path, n=0, templates=[phantom])
    with pytest.raises(SynthError, match="did you mean 'kidney_stone'"):
        synthesize_dataset(tmp_path, n=1, templates=[phantom], types=["kidney_stones"])
    no_lung = Template("x", phantom.ct, np.where(np.isin(phantom.organs, (10, 14)), 0, phantom.organs),
                       phantom.affine, phantom.spacing)
    with pytest.raises(SynthError, match="no template contains the organ of lung_cancer"):
        synthesize_dataset(tmp_path, n=1, templates=[no_lung], types=["lung_cancer"])


def test_cli_generate_and_stats(tmp_path, phantom: Template, capsys) -> None:
    from ctsynth_bench.cli import data_lesions as _cmd_data_lesions

    ct_path, org_path = tmp_path / "ct.nii.gz", tmp_path / "org.nii.gz"
    nib.save(nib.Nifti1Image(phantom.ct, phantom.affine), ct_path)
    nib.save(nib.Nifti1Image(phantom.organs, phantom.affine), org_path)
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", action="store_true")
    _cmd_data_lesions.register(parser.add_subparsers())
    out = tmp_path / "set"
    args = parser.parse_args(["lesions", "--n", "3", "--out", str(out), "--types", "liver_cyst", "pancreas_cancer",
                              "--template-files", f"{ct_path}:{org_path}", "--no-progress"])
    assert args.func(args) == 0
    assert len(list((out / "reports").glob("*.json"))) == 3
    args = parser.parse_args(["lesions", "--stats", str(out), "--no-progress", "--gallery", str(tmp_path / "g.png")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "density" in text and "overall agreement" in text and (tmp_path / "g.png").stat().st_size > 1000


def test_template_own_lesion_is_kept_apart(tmp_path, phantom: Template) -> None:
    own = np.zeros(phantom.ct.shape, np.uint8)
    own[36:42, 24:30, 28:33] = 1  # a "real" lesion inside the liver
    tmpl = Template("with_lesion", phantom.ct, phantom.organs, phantom.affine, phantom.spacing, lesion=own)
    for i in range(4):
        sc = synthesize_case(tmpl, "liver_cancer", np.random.default_rng(i))
        assert sc.template_lesion is not None and sc.template_lesion.sum() > 0
        assert not (sc.lesion.astype(bool) & sc.template_lesion.astype(bool)).any(), "no overlap with the real lesion"
        assert sc.organs.max() < 256 and (sc.organs[sc.template_lesion > 0] == 5).mean() > 0.9
    synthesize_dataset(tmp_path, n=1, templates=[tmpl], types=["liver_cyst"])
    assert (tmp_path / "template_lesions" / "synth_00000.nii.gz").is_file()
    assert np.asarray(nib.load(tmp_path / "labelsTr" / "synth_00000.nii.gz").dataobj).max() == 1
