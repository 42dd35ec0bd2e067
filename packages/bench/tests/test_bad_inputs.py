"""Bad inputs through the ``bench`` CLI and the Python API: one clear line, nothing written.

Every case here is a mistake a user makes (issue 14's classes): data that must be refused, inputs
that used to end in a traceback, errors that did not say what is wrong, runs that left misleading
state. Each CLI case must exit 2 with exactly one line on stderr naming the input, write nothing
into a fresh output path, and leave an existing dataset byte-for-byte as it was. Each API case
must raise a ``ValueError``/``TypeError`` subclass naming the input, writing nothing.

The templates are small synthetic CTs (a body of soft tissue and fat in air, with liver, spleen
and kidneys) written by the tests, so the whole suite runs offline in seconds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ctsynth_bench.cli import main
from ctsynth_bench.exceptions import BenchError

SHAPE = (48, 40, 32)
SPACING = 4.0
#: TotalSegmentator v2 ids used by the phantom.
SPLEEN, KIDNEY_R, KIDNEY_L, LIVER = 1, 2, 3, 5


# --------------------------------------------------------------------------------------------
# Inputs


def _ellipsoid(centre, radii):
    grid = np.indices(SHAPE, dtype=np.float64)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small abdomen in RAS voxel order: (ct float32 HU, organs int16, affine).

    RAS+: world x grows towards the patient's right, so the liver and right kidney sit at high x.
    """
    rng = np.random.default_rng(seed)
    ct = np.full(SHAPE, -1000.0)
    body = _ellipsoid((24, 20, 16), (22, 17, 40))
    ct[body] = -100.0  # fat
    inner = _ellipsoid((24, 20, 16), (19, 14, 40))
    ct[inner] = 40.0
    organs = np.zeros(SHAPE, dtype=np.int16)
    for label, centre, radii, hu in [
        (LIVER, (33, 22, 16), (9, 8, 10), 60.0),
        (SPLEEN, (13, 24, 16), (5, 5, 6), 50.0),
        (KIDNEY_R, (30, 12, 14), (3, 3, 5), 150.0),
        (KIDNEY_L, (17, 12, 14), (3, 3, 5), 150.0),
    ]:
        region = _ellipsoid(centre, radii) & inner
        organs[region] = label
        ct[region] = hu
    ct += rng.normal(0.0, 8.0, SHAPE) * (ct > -500)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = (-96.0, -80.0, -64.0)
    return ct.astype(np.float32), organs, affine


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def bad_template(kind: str, folder: Path) -> tuple[Path, Path]:
    """A CT/organ-map pair with one thing wrong (``kind``); returns (ct path, organs path)."""
    ct, organs, affine = phantom()
    org_affine = affine.copy()
    ct_name, org_name = "ct.nii.gz", "organs.nii.gz"
    if kind == "shifted_60mm":
        org_affine[0, 3] += 60.0
    elif kind == "organs_flipped_lr":  # the same voxels, mirrored world x: a different world box
        org_affine[0, 0] = -SPACING
    elif kind == "ct_nan":
        ct[3, 3, 3] = np.nan
    elif kind == "ct_inf":
        ct[3, 3, 3] = np.inf
    elif kind == "ct_plus_1024":
        ct = ct + 1024.0
    elif kind == "ct_plus_1024_with_padding":  # padding at -3024 + 1024 keeps the minimum low
        ct = ct + 1024.0
        ct[:, :, 0] = -2000.0
    elif kind == "ct_scaled_0_1":
        ct = (ct + 1024.0) / 4096.0
    elif kind == "label_minus_5":
        organs[organs == SPLEEN] = -5
    elif kind == "label_5_5":
        organs = organs.astype(np.float32)
        organs[organs == SPLEEN] = 5.5
    elif kind == "label_out_of_range":
        organs[organs == SPLEEN] = 200
    elif kind == "shape_differs":
        organs = organs[:, :, :-2]
    elif kind == "ct_4d":
        ct = np.stack([ct, ct], axis=-1)
    elif kind == "ct_2d":
        ct = ct[:, :, 16]
    elif kind == "ct_text_file":
        ct_name = "ct.nii.gz"
        (folder / ct_name).parent.mkdir(parents=True, exist_ok=True)
        (folder / ct_name).write_text("this is a text file, not an image\n")
    elif kind == "organs_empty":
        organs = np.zeros_like(organs)
    elif kind == "organs_missing":
        org_name = "does-not-exist.nii.gz"
    else:  # pragma: no cover - a typo in the table below
        raise AssertionError(kind)
    ct_path = folder / ct_name
    if kind != "ct_text_file":
        write_nifti(ct_path, ct, affine)
    org_path = folder / org_name
    if kind != "organs_missing":
        write_nifti(org_path, organs, org_affine)
    return ct_path, org_path


#: kind -> words the one-line error must hold (besides the file name).
BAD_TEMPLATES = {
    "shifted_60mm": ["affine"],
    "organs_flipped_lr": ["affine"],
    "ct_nan": ["NaN"],
    "ct_inf": ["infinite"],
    "ct_plus_1024": ["HU"],
    "ct_plus_1024_with_padding": ["HU"],
    "ct_scaled_0_1": ["HU"],
    "label_minus_5": ["-5"],
    "label_5_5": ["integer"],
    "label_out_of_range": ["200"],
    "shape_differs": ["shape"],
    "ct_4d": ["4D"],
    "ct_2d": ["2D"],
    "ct_text_file": ["NIfTI"],
    "organs_missing": ["not found"],
    "organs_empty": ["no organ"],
}


# --------------------------------------------------------------------------------------------
# Checks


def snapshot(path: Path) -> dict[str, str] | None:
    """Every file below ``path`` (hidden ones too) -> sha256; None when ``path`` does not exist."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's option errors (printed as one line)
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2, f"exit {rc}, stderr: {err}"
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    line = lines[0]
    assert line.startswith("bench: error: "), line
    assert "Traceback" not in err
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


@pytest.fixture(scope="session")
def template_pair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("template")
    ct, organs, affine = phantom()
    return write_nifti(folder / "ct.nii.gz", ct, affine), write_nifti(
        folder / "organs.nii.gz", organs, affine
    )


def lesion_argv(out: Path, ct: Path, organs: Path, *extra: str) -> list[str]:
    return [
        "data", "lesions", "--n", "3", "--out", out, "--template-files", f"{ct}:{organs}",
        "--types", "liver_cyst", "kidney_cyst", "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def made_set(tmp_path_factory, template_pair) -> Path:
    """A valid dataset of 3 cases written by the CLI (copied by each test that may damage it)."""
    out = tmp_path_factory.mktemp("made") / "set"
    assert main([str(a) for a in lesion_argv(out, *template_pair)]) == 0
    assert len(list((out / "reports").glob("*.json"))) == 3
    return out


@pytest.fixture
def existing(made_set, tmp_path) -> Path:
    out = tmp_path / "existing"
    shutil.copytree(made_set, out)
    return out


@pytest.fixture(params=["fresh", "existing"])
def out_dir(request, tmp_path, made_set) -> Path:
    """The output folder of a failing run: a path that does not exist yet, or a finished set."""
    if request.param == "fresh":
        return tmp_path / "fresh-out"
    out = tmp_path / "existing"
    shutil.copytree(made_set, out)
    return out


# --------------------------------------------------------------------------------------------
# Data that must be refused, not written


@pytest.mark.parametrize("kind", list(BAD_TEMPLATES))
def test_cli_refuses_a_bad_template_pair(kind, tmp_path, out_dir, capsys):
    ct, organs = bad_template(kind, tmp_path / "bad")
    before = snapshot(out_dir)
    rc, _, err = run(lesion_argv(out_dir, ct, organs), capsys)
    line = assert_one_line_error(rc, err, *BAD_TEMPLATES[kind])
    assert ct.name in line or organs.name in line
    assert snapshot(out_dir) == before


@pytest.mark.parametrize("kind", list(BAD_TEMPLATES))
def test_api_refuses_a_bad_template_pair(kind, tmp_path):
    from ctsynth_bench.rulesynth import template_from_files

    ct, organs = bad_template(kind, tmp_path / "bad")
    with pytest.raises(BenchError) as info:
        template_from_files(ct, organs)
    msg = str(info.value)
    assert ct.name in msg or organs.name in msg
    for needle in BAD_TEMPLATES[kind]:
        assert needle in msg


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("nan", "NaN"),
        ("plus_1024", "HU"),
        ("scaled_0_1", "HU"),
        ("label_minus_5", "-5"),
        ("label_5_5", "integer"),
        ("label_out_of_range", "200"),
        ("shape", "shape"),
        ("affine_singular", "affine"),
    ],
)
def test_api_template_built_from_arrays_is_validated(change, needle):
    from ctsynth_bench.rulesynth import Template

    ct, organs, affine = phantom()
    if change == "nan":
        ct[1, 1, 1] = np.nan
    elif change == "plus_1024":
        ct = ct + 1024
    elif change == "scaled_0_1":
        ct = (ct + 1024) / 4096
    elif change == "label_minus_5":
        organs[organs == SPLEEN] = -5
    elif change == "label_5_5":
        organs = organs.astype(np.float32)
        organs[organs == SPLEEN] = 5.5
    elif change == "label_out_of_range":
        organs[organs == SPLEEN] = 200
    elif change == "shape":
        organs = organs[:-1]
    elif change == "affine_singular":
        affine = np.zeros((4, 4))
    with pytest.raises(BenchError, match="template 'bad'") as info:
        Template(name="bad", ct=ct, organs=organs, affine=affine, spacing=(SPACING,) * 3)
    assert needle in str(info.value)


def test_loaders_apply_the_same_hu_check(tmp_path):
    # One validation: the loaders refuse a +1024 CT even when padding keeps its minimum low.
    from ctsynth_bench.data import load_single

    ct, organs = bad_template("ct_plus_1024_with_padding", tmp_path)
    with pytest.raises(BenchError, match="HU"):
        load_single(ct, organs=organs)


# --------------------------------------------------------------------------------------------
# Paths: --out a file, a folder where a file is expected, under a file, read-only, full


def test_cli_out_that_is_a_file(tmp_path, template_pair, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    rc, _, err = run(lesion_argv(target, *template_pair), capsys)
    assert_one_line_error(rc, err, "--out", str(target), "file")
    assert target.read_text() == "keep me\n"


def test_cli_out_under_a_file(tmp_path, template_pair, capsys):
    parent = tmp_path / "notes.txt"
    parent.write_text("keep me\n")
    rc, _, err = run(lesion_argv(parent / "set", *template_pair), capsys)
    assert_one_line_error(rc, err, "--out", "notes.txt")
    assert parent.read_text() == "keep me\n"


@pytest.mark.parametrize("where", ["existing_dir", "under_a_file"])
def test_cli_show_png_path_that_cannot_be_a_file(where, tmp_path, capsys):
    if where == "existing_dir":
        png = tmp_path / "figures"
        png.mkdir()
    else:
        (tmp_path / "notes.txt").write_text("keep me\n")
        png = tmp_path / "notes.txt" / "view.png"
    before = snapshot(tmp_path)
    rc, _, err = run(["data", "show", "abdomen", "--out", png], capsys)
    assert_one_line_error(rc, err, "--out")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["existing_dir", "under_a_file"])
def test_cli_gallery_path_that_cannot_be_a_file(where, existing, tmp_path, capsys):
    if where == "existing_dir":
        png = tmp_path / "gallery"
        png.mkdir()
    else:
        (tmp_path / "notes.txt").write_text("keep me\n")
        png = tmp_path / "notes.txt" / "gallery.png"
    before = snapshot(tmp_path)
    rc, _, err = run(
        ["data", "lesions", "--stats", existing, "--gallery", png, "--no-progress"], capsys
    )
    assert_one_line_error(rc, err, "--gallery")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_cli_read_only_or_full_filesystem(code, out_dir, template_pair, monkeypatch, capsys):
    # A real read-only or full disk cannot be made by an unprivileged test; the OS error is raised
    # where every file is put in place.
    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    before = snapshot(out_dir)
    monkeypatch.setattr(os, "replace", refuse)
    rc, _, err = run(lesion_argv(out_dir, *template_pair), capsys)
    monkeypatch.undo()
    line = assert_one_line_error(rc, err, os.strerror(code))
    assert str(out_dir) in line
    if before is None:
        assert not [p for p in out_dir.rglob("*") if p.is_file()] if out_dir.exists() else True
    else:
        assert snapshot(out_dir) == before


def test_cli_read_only_filesystem_under_show(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "v.png"))

    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", refuse)
    rc, _, err = run(["data", "show", "abdomen", "--out", tmp_path / "v.png"], capsys)
    assert_one_line_error(rc, err, "Read-only file system", "v.png")


# --------------------------------------------------------------------------------------------
# Files that are not what they claim


def test_cli_corrupt_image_under_stats(existing, capsys):
    image = sorted((existing / "imagesTr").glob("*.nii.gz"))[0]
    image.write_bytes(image.read_bytes()[:200])
    before = snapshot(existing)
    rc, _, err = run(["data", "lesions", "--stats", existing, "--no-progress"], capsys)
    assert_one_line_error(rc, err, image.name)
    assert snapshot(existing) == before


def test_cli_corrupt_report_json_is_named(existing, tmp_path, capsys):
    report = sorted((existing / "reports").glob("*.json"))[1]
    report.write_text('{"case": "synth_00001", ')
    before = snapshot(existing)
    for argv in (
        ["data", "lesions", "--stats", existing, "--no-progress"],
        ["data", "show", report.stem, "--dataset", existing, "--out", tmp_path / "v.png"],
    ):
        rc, _, err = run(argv, capsys)
        assert_one_line_error(rc, err, report.name, "JSON")
    assert snapshot(existing) == before
    assert not (tmp_path / "v.png").exists()


def test_cli_resume_with_corrupt_report_or_settings_is_named(existing, template_pair, capsys):
    report = sorted((existing / "reports").glob("*.json"))[0]
    report.write_text("[1, 2")
    before = snapshot(existing)
    rc, _, err = run(lesion_argv(existing, *template_pair, "--n", "4"), capsys)
    assert_one_line_error(rc, err, report.name, "JSON")
    assert snapshot(existing) == before
    report.unlink()
    (existing / "synth.json").write_text("{not json")
    before = snapshot(existing)
    rc, _, err = run(lesion_argv(existing, *template_pair), capsys)
    assert_one_line_error(rc, err, "synth.json", "JSON")
    assert snapshot(existing) == before


def test_corrupt_case_json_in_the_cache_is_named(tmp_path, capsys):
    from ctsynth_bench.data import bundled_dir, list_cases

    case = tmp_path / "cache" / "cases" / "lung1"
    shutil.copytree(bundled_dir() / "chest", case)
    (case / "case.json").write_text('{"name": "lung1",')
    rc, _, err = run(["data", "list", "--cache-dir", tmp_path / "cache"], capsys)
    assert_one_line_error(rc, err, "case.json", "JSON")
    with pytest.raises(BenchError, match=r"lung1.*case\.json"):
        list_cases(tmp_path / "cache")


# --------------------------------------------------------------------------------------------
# Options: named, checked before anything is written, never silently ignored


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--seed", "-1"], ["--seed", "-1"]),
        (["--n", "0"], ["--n", "0"]),
        (["--n", "-3"], ["--n"]),
        (["--types", "liver_cist"], ["liver_cist", "liver_cyst"]),
        (["--templates", "abdomn"], ["abdomn", "abdomen"]),
        (["--gallery", "g.png"], ["--gallery", "--stats"]),
    ],
)
def test_cli_bad_option_is_named_and_nothing_is_written(
    extra, needles, out_dir, template_pair, capsys
):
    before = snapshot(out_dir)
    rc, _, err = run(lesion_argv(out_dir, *template_pair, *extra), capsys)
    assert_one_line_error(rc, err, *needles)
    assert snapshot(out_dir) == before


@pytest.mark.parametrize("extra", [["--n", "5"], ["--out", "elsewhere"]])
def test_cli_stats_refuses_options_it_would_ignore(extra, existing, capsys):
    before = snapshot(existing)
    rc, _, err = run(["data", "lesions", "--stats", existing, *extra], capsys)
    assert_one_line_error(rc, err, "--stats", extra[0])
    assert snapshot(existing) == before


def test_cli_missing_out_is_named(capsys, template_pair):
    rc, _, err = run(
        ["data", "lesions", "--n", "2", "--template-files", "{}:{}".format(*template_pair)], capsys
    )
    assert_one_line_error(rc, err, "--out")


def test_api_synthesize_dataset_checks_before_writing(tmp_path, template_pair):
    from ctsynth_bench.rulesynth import synthesize_dataset, template_from_files

    template = template_from_files(*template_pair)
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        ({"out": tmp_path / "a", "n": 0}, "n"),
        ({"out": tmp_path / "b", "n": 2, "seed": -1}, "seed"),
        ({"out": tmp_path / "c", "n": 2, "types": ["liver_cist"]}, "liver_cist"),
        ({"out": afile, "n": 2}, str(afile)),
        ({"out": afile / "sub", "n": 2}, str(afile)),
    ]
    for kwargs, needle in cases:
        with pytest.raises(BenchError) as info:
            synthesize_dataset(templates=[template], **kwargs)
        assert needle in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert afile.read_text() == "x"


def test_api_outputs_that_cannot_be_files(existing, tmp_path):
    from ctsynth_bench.viz import make_gallery, render_views

    ct, organs, _ = phantom()
    (tmp_path / "f").write_text("x")
    for out in (tmp_path, tmp_path / "f" / "x.png"):
        with pytest.raises(BenchError, match="out"):
            render_views(ct, label=organs == LIVER, spacing=(4.0,) * 3, out=out)
        with pytest.raises(BenchError, match="out"):
            make_gallery(existing, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "f"]


# --------------------------------------------------------------------------------------------
# State that misleads


def test_fewer_cases_asked_than_present_says_what_happens(existing, template_pair, capsys):
    before = snapshot(existing)
    rc, out, _ = run(lesion_argv(existing, *template_pair, "--n", "1"), capsys)
    assert rc == 0
    assert "holds 3 finished cases" in out and "--n 1" in out
    assert "kept 1" not in out
    assert snapshot(existing) == before


def test_dataset_json_is_current_after_an_interruption(tmp_path, template_pair, monkeypatch):
    from ctsynth_bench.rulesynth import _dataset, synthesize_dataset, template_from_files

    real = _dataset.synthesize_case
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_dataset, "synthesize_case", interrupted)
    out = tmp_path / "set"
    with pytest.raises(KeyboardInterrupt):
        synthesize_dataset(
            out, n=5, templates=[template_from_files(*template_pair)], types=["liver_cyst"]
        )
    desc = json.loads((out / "dataset.json").read_text())
    assert desc["numTraining"] == 2 == len(list((out / "reports").glob("*.json")))


def test_a_fetched_case_shadows_the_bundled_one_everywhere(tmp_path, capsys, monkeypatch):
    from ctsynth_bench.data import bundled_dir, list_cases

    cache = tmp_path / "cache"
    shutil.copytree(bundled_dir() / "abdomen", cache / "cases" / "abdomen")
    infos = list_cases(cache)
    names = [i.name for i in infos]
    assert names.count("abdomen") == 1
    assert next(i for i in infos if i.name == "abdomen").where == "fetched"
    rc, out, _ = run(["data", "list", "--cache-dir", cache, "--json"], capsys)
    assert rc == 0 and [r["name"] for r in json.loads(out)].count("abdomen") == 1
    from ctsynth_bench.rulesynth import load_templates

    monkeypatch.setenv("CTSYNTH_CACHE", str(cache))
    assert [t.name for t in load_templates()].count("abdomen") == 1


# --------------------------------------------------------------------------------------------
# Pipes, --debug, and answering fast


def _bench(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, **kwargs
    )


def test_closed_pipe_is_one_line_not_a_traceback(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ctsynth_bench.cli import main; raise SystemExit(main())",
         "data", "list", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    proc.stdout.close()  # the reader went away before the first byte (`bench ... | head -0`)
    err = proc.stderr.read()
    rc = proc.wait(timeout=120)
    proc.stderr.close()
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert_one_line_error(rc, err, "output")


def test_debug_shows_the_traceback(tmp_path, template_pair):
    bad_ct, bad_org = bad_template("ct_nan", tmp_path)
    with pytest.raises(BenchError):
        main(["--debug", *[str(a) for a in lesion_argv(tmp_path / "o", bad_ct, bad_org)]])


def test_argument_errors_come_before_torch_and_templates(tmp_path):
    done = _bench(
        f"""
        import sys, time
        from ctsynth_bench.cli import main
        t0 = time.monotonic()
        codes = [main(['data', 'lesions', '--n', '0', '--out', {str(tmp_path / "o")!r}]),
                 main(['data', 'lesions', '--n', '2'])]
        print(codes, 'torch' in sys.modules, 'nibabel' in sys.modules, time.monotonic() - t0)
        """,
        timeout=120,
    )
    codes, torch_loaded, nib_loaded, seconds = done.stdout.rsplit(" ", 3)
    assert codes.strip() == "[2, 2]" and torch_loaded == "False" and nib_loaded == "False", done
    assert float(seconds) < 1.0
    assert not (tmp_path / "o").exists()
    assert done.stderr.count("bench: error: ") == 2


def test_cache_dir_that_is_a_file_is_named(tmp_path, capsys):
    from ctsynth_bench.data import fetch, list_cases

    afile = tmp_path / "cache.txt"
    afile.write_text("x")
    for argv in (["data", "list"], ["data", "fetch", "--case", "abdomen"]):
        rc, _, err = run([*argv, "--cache-dir", afile], capsys)
        assert_one_line_error(rc, err, "cache.txt", "not a folder")
    with pytest.raises(BenchError, match="not a folder"):
        list_cases(afile)
    with pytest.raises(BenchError, match="list of case names"):
        fetch(tmp_path / "cache", cases="abdomen", progress=False)
    assert afile.read_text() == "x" and not (tmp_path / "cache").exists()


def test_show_refuses_cache_dir_with_dataset(existing, tmp_path, capsys):
    case = sorted((existing / "reports").glob("*.json"))[0].stem
    argv = ["data", "show", case, "--dataset", existing, "--cache-dir", tmp_path, "--out"]
    rc, _, err = run([*argv, tmp_path / "v.png"], capsys)
    assert_one_line_error(rc, err, "--cache-dir", "--dataset")
    assert not (tmp_path / "v.png").exists()


def test_stats_names_a_corrupt_dataset_json(existing, capsys):
    (existing / "dataset.json").write_text('{"name": ')
    before = snapshot(existing)
    rc, _, err = run(["data", "lesions", "--stats", existing, "--no-progress"], capsys)
    assert_one_line_error(rc, err, "dataset.json", "JSON")
    assert snapshot(existing) == before


def test_foreign_folder_is_not_filled(tmp_path, template_pair, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\documentclass{article}\n")
    before = snapshot(folder)
    rc, _, err = run(lesion_argv(folder, *template_pair), capsys)
    assert_one_line_error(rc, err, "--out", "no synth.json")
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "fetch", "--case", "abdomen", "--cache-dir", ""],
        ["data", "list", "--cache-dir", ""],
        ["data", "lesions", "--stats", ""],
        ["data", "lesions", "--n", "1", "--out", ""],
    ],
    ids=["fetch-cache-dir", "list-cache-dir", "stats", "out"],
)
def test_empty_path_never_means_the_current_folder(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(argv, capsys)
    assert_one_line_error(rc, err, "empty")
    assert list(tmp_path.iterdir()) == []


def test_api_small_mistakes(tmp_path, template_pair):
    from ctsynth_bench.rulesynth import Template, synthesize_dataset, template_from_files
    from ctsynth_bench.viz import render_views

    ct, organs, affine = phantom()
    with pytest.raises(BenchError, match="template name"):
        Template(name=None, ct=ct, organs=organs, affine=affine, spacing=(SPACING,) * 3)
    with pytest.raises(BenchError, match="finite"):
        render_views(np.full_like(ct, np.nan), spacing=(SPACING,) * 3, out=tmp_path / "v.png")
    assert list(tmp_path.iterdir()) == []
    # NumPy integers are whole numbers too: accepted, not refused.
    summary = synthesize_dataset(
        tmp_path / "set",
        n=np.int64(1),
        seed=np.int64(2),
        types=["liver_cyst"],
        templates=[template_from_files(*template_pair)],
    )
    assert summary.written == 1
