"""LesionDiffusion CT-space pipeline: geometry kept, outside voxels bit-identical, resume, errors.

The networks are replaced by ``FakeLesionSystem`` (tests/ld_fake_system.py), a test double that
follows the system contract; the pipeline around it is what these tests check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import report_bbox
import torch
from ctsynth_bench.data import bundled_dir, load_case
from ctsynth_bench.lesiondiffusion.pipeline import (
    ReportSource,
    SynthesisError,
    ct_input_from_arrays,
    load_ct_input,
    place_lesion,
    synthesize_cases,
    synthesize_lesion,
)
from lesion_inpaint import blend_weights

sys.path.insert(0, str(Path(__file__).parent))
from ld_fake_system import FakeLesionSystem

HERE = Path(__file__).parent
ORGAN_OF = {"abdomen": "liver", "chest": "lung"}


def _files(name: str) -> tuple[Path, Path]:
    return bundled_dir() / name / "ct.nii.gz", bundled_dir() / name / "organs.nii.gz"


def _sidecar(root: Path, case: str) -> dict:
    return json.loads((root / "reports" / f"{case}.json").read_text())


@pytest.mark.parametrize("name", ["abdomen", "chest"])
def test_real_case_geometry_kept_and_outside_bit_identical(tmp_path: Path, name: str) -> None:
    ct_path, org_path = _files(name)
    inp = load_ct_input(ct_path, org_path)
    out = tmp_path / "set"
    summary = synthesize_cases(
        FakeLesionSystem(), inp, ReportSource(organ=ORGAN_OF[name]), out=out, n=2, seed=3
    )
    assert summary.written == ["ld_00000", "ld_00001"]
    case = load_case(name)
    src = nib.load(ct_path)
    for cid in summary.written:
        img = nib.load(out / "imagesTr" / f"{cid}_0000.nii.gz")
        assert img.shape == src.shape and img.get_data_dtype() == np.int16
        assert np.array_equal(img.affine, src.affine)
        for key in ("qform_code", "sform_code", "pixdim", "xyzt_units", "dim"):
            assert np.array_equal(img.header[key], src.header[key]), key
        ct = np.asarray(img.dataobj)
        lesion = np.asarray(nib.load(out / "labelsTr" / f"{cid}.nii.gz").dataobj)
        organs = np.asarray(nib.load(out / "organs" / f"{cid}.nii.gz").dataobj)
        assert lesion.any() and set(np.unique(lesion)) == {0, 1}
        footprint = blend_weights(lesion, dilation=1, feather=2) > 0
        assert np.array_equal(
            ct[~footprint], case.ct[~footprint]
        )  # bit-identical outside the paste
        assert not np.array_equal(ct[lesion > 0], case.ct[lesion > 0])  # and the lesion is new
        ids = report_bbox.organ_ids(ORGAN_OF[name])
        assert np.isin(organs[lesion > 0], ids).all()  # organ map and lesion agree
        meta = _sidecar(out, cid)
        assert meta["report"]["organ"] in (ORGAN_OF[name], *report_bbox.ORGAN_GROUPS["lung"])
        assert meta["system"]["text_encoder"] == "fake-encoder" and meta["system"]["run"] is None
        assert meta["seeds"]["case_index"] == int(cid[-5:]) and "torch" in meta["seeds"]
        measured = meta["measured"]
        assert measured["volume_ml"] == pytest.approx(
            lesion.sum() * np.prod(case.spacing) / 1000, rel=1e-6
        )
        assert {"extent_mm", "sphericity", "delta_hu", "hu_std"} <= set(measured)
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 2


def test_non_ras_input_keeps_voxel_order(tmp_path: Path) -> None:
    case = load_case("abdomen")
    # store the volume LPI-like: flip x and z, swap y/z; the affine says where each voxel is
    ct = np.flip(np.flip(case.ct.astype(np.int16), 0), 2).transpose(0, 2, 1)
    org = np.flip(np.flip(case.organs.astype(np.uint8), 0), 2).transpose(0, 2, 1)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, case.ct.shape[0] - 1
    flip[2, 2], flip[2, 3] = -1, case.ct.shape[2] - 1
    perm = np.eye(4)[[0, 2, 1, 3]]
    aff = case.affine @ flip @ perm
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ct), aff), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(org), aff), tmp_path / "org.nii.gz")
    inp = load_ct_input(tmp_path / "ct.nii.gz", tmp_path / "org.nii.gz")
    assert inp.spacing == pytest.approx(case.spacing)
    assert np.array_equal(inp.ras(inp.ct), case.ct.astype(np.int16))
    synthesize_cases(FakeLesionSystem(), inp, ReportSource(organ="liver"), out=tmp_path / "o", n=1)
    img = nib.load(tmp_path / "o" / "imagesTr" / "ld_00000_0000.nii.gz")
    assert img.shape == ct.shape and np.allclose(img.affine, aff)
    lesion = np.asarray(nib.load(tmp_path / "o" / "labelsTr" / "ld_00000.nii.gz").dataobj)
    foot = blend_weights(lesion, dilation=1, feather=2) > 0
    assert np.array_equal(np.asarray(img.dataobj)[~foot], ct[~foot])
    assert np.isin(org[lesion > 0], report_bbox.organ_ids("liver")).mean() > 0.5


def _report(**changes) -> report_bbox.Report:
    base = report_bbox.sample_report(
        np.random.default_rng(0),
        lesion_type="liver_cancer",
        size=24,
        lesion_location="within the parenchymal organ",
    )
    return report_bbox.Report.from_dict({**base.to_dict(), **changes})


def test_report_density_reaches_the_ct_and_text_off_removes_it() -> None:
    case = load_case("abdomen")
    inp = ct_input_from_arrays(case.ct, case.organs, case.affine, name="abdomen")
    means = {}
    for density in ("hypodense", "hyperdense"):
        report = _report(density=density)
        box = place_lesion(ReportSource(report=report), inp, np.random.default_rng(1))[1]
        for text in (True, False):
            res = synthesize_lesion(
                FakeLesionSystem(),
                inp,
                report,
                box,
                generator=torch.Generator().manual_seed(0),
                text=text,
            )
            means[density, text] = float(res.hu[res.mask > 0].mean())
    assert means["hyperdense", True] - means["hypodense", True] > 50
    assert abs(means["hyperdense", False] - means["hypodense", False]) < 1e-3


def test_box_and_organ_map_reach_the_system() -> None:
    case = load_case("abdomen")
    inp = ct_input_from_arrays(case.ct, case.organs, case.affine, name="abdomen")
    report = _report()
    system = FakeLesionSystem()
    boxes = [
        place_lesion(ReportSource(report=report), inp, np.random.default_rng(s))[1] for s in (1, 2)
    ]
    assert boxes[0] != boxes[1]
    results = [
        synthesize_lesion(system, inp, report, b, generator=torch.Generator().manual_seed(0))
        for b in boxes
    ]
    assert results[0].region != results[1].region  # the lesion goes where the box is
    for res, box in zip(results, boxes, strict=True):
        full = np.zeros(case.ct.shape, bool)
        full[res.region] = res.mask > 0
        idx = np.argwhere(full)
        centre = idx.mean(0)
        assert np.all(np.abs(centre - np.asarray(box.center)) <= np.asarray(box.size) / 2 + 1)
    # the organ map drives the box: removing the liver makes the case unusable
    organs = case.organs.copy()
    organs[np.isin(organs, report_bbox.organ_ids("liver"))] = 0
    inp2 = ct_input_from_arrays(case.ct, organs, case.affine, name="abdomen")
    with pytest.raises(SynthesisError, match="absent"):
        place_lesion(ReportSource(report=report), inp2, np.random.default_rng(1))


def test_unusable_inputs_write_nothing(tmp_path: Path) -> None:
    ct_a, org_a = _files("abdomen")
    _, org_c = _files("chest")
    with pytest.raises(SynthesisError, match="different shapes"):
        load_ct_input(ct_a, org_c)
    img = nib.load(org_a)
    shifted = img.affine.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), shifted), tmp_path / "shifted.nii.gz")
    with pytest.raises(SynthesisError, match="different affines"):
        load_ct_input(ct_a, tmp_path / "shifted.nii.gz")
    inp = load_ct_input(*_files("chest"))
    out = tmp_path / "out"
    with pytest.raises(SynthesisError, match=r"pancreas.*absent"):
        synthesize_cases(FakeLesionSystem(), inp, ReportSource(organ="pancreas"), out=out)
    huge = report_bbox.sample_report(
        np.random.default_rng(0),
        lesion_type="pancreas_cyst",
        size=[40, 40, 40],
        lesion_location="within the parenchymal organ",
    )
    inp_a = load_ct_input(ct_a, org_a)
    with pytest.raises(SynthesisError, match="cannot fit"):
        synthesize_cases(FakeLesionSystem(), inp_a, ReportSource(report=huge), out=out)
    with pytest.raises(SynthesisError, match="--n"):
        synthesize_cases(FakeLesionSystem(), inp_a, ReportSource(organ="liver"), out=out, n=0)
    assert not out.exists()


def _run_script(out: Path, n: int, *, slow: float = 0.0, rank: int = 0, world: int = 1) -> str:
    ct, org = _files("abdomen")
    return textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(HERE)!r})
        from ld_fake_system import FakeLesionSystem
        from ctsynth_bench.lesiondiffusion import pipeline
        real = pipeline.write_case
        def slow_write(*a, **k):
            out = real(*a, **k)
            time.sleep({slow})
            return out
        pipeline.write_case = slow_write
        inp = pipeline.load_ct_input({str(ct)!r}, {str(org)!r})
        pipeline.synthesize_cases(FakeLesionSystem(), inp, pipeline.ReportSource(lesion_type="kidney_cyst"),
                                  out={str(out)!r}, n={n}, seed=5, rank={rank}, world={world})
    """)


def _contents(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name.endswith(".nii.gz"):
            out[str(p.relative_to(root))] = np.asarray(nib.load(p).dataobj).tobytes()
        elif p.is_file() and p.parent.name == "reports":
            meta = json.loads(p.read_text())
            meta.pop("timings_s")
            out[str(p.relative_to(root))] = meta
    return out


def test_batch_resumes_after_sigkill_with_the_same_files(tmp_path: Path) -> None:
    n = 4
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-c", _run_script(full, n)], check=True, timeout=300)
    part = tmp_path / "part"
    proc = subprocess.Popen([sys.executable, "-c", _run_script(part, n, slow=30.0)])
    try:
        deadline = time.time() + 240
        while not (part / "reports" / "ld_00000.json").exists():
            assert proc.poll() is None and time.time() < deadline, "the batch did not start"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # mid-batch: case 0 written, case 1 not started
    finally:
        proc.wait()
    assert len(list((part / "reports").glob("*.json"))) == 1
    subprocess.run([sys.executable, "-c", _run_script(part, n)], check=True, timeout=300)
    assert _contents(part) == _contents(full)
    assert not [p for p in part.rglob(".*") if p.is_file()]  # no temporary files left


def test_ranks_split_cases_and_together_make_the_whole_set(tmp_path: Path) -> None:
    inp = load_ct_input(*_files("abdomen"))
    src = ReportSource(lesion_type="kidney_cyst")
    one = synthesize_cases(FakeLesionSystem(), inp, src, out=tmp_path / "one", n=3, seed=5)
    r0 = synthesize_cases(
        FakeLesionSystem(), inp, src, out=tmp_path / "two", n=3, seed=5, rank=0, world=2
    )
    r1 = synthesize_cases(
        FakeLesionSystem(), inp, src, out=tmp_path / "two", n=3, seed=5, rank=1, world=2
    )
    assert r0.written == ["ld_00000", "ld_00002"] and r1.written == ["ld_00001"]
    assert _contents(tmp_path / "one") == _contents(tmp_path / "two")
    assert one.written == ["ld_00000", "ld_00001", "ld_00002"]


def test_reports_from_a_writer_are_used_per_case(tmp_path: Path) -> None:
    """The --llm path: each case asks the writer (here report-bbox's offline FakeReportWriter)."""
    inp = load_ct_input(*_files("abdomen"))
    answer = _report(density="hyperdense").to_dict()
    answer.pop("lesion_type")
    writer = report_bbox.FakeReportWriter(answers=[answer, answer])
    src = ReportSource(lesion_type="liver_cancer", writer=writer)
    summary = synthesize_cases(FakeLesionSystem(), inp, src, out=tmp_path / "llm", n=2, seed=1)
    assert summary.written == ["ld_00000", "ld_00001"] and len(writer.requests) == 2
    assert writer.requests[0].lesion_type == "liver_cancer"
    for case in summary.written:
        assert _sidecar(tmp_path / "llm", case)["report"]["density"] == "hyperdense"
    assert (
        json.loads((tmp_path / "llm" / "synth.json").read_text())["source"]["writer"]
        == "FakeReportWriter"
    )
