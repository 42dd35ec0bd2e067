"""Try ctsynth-bench as a careless user would: many bad inputs, each outcome classified.

Run from the repository root (offline, a few minutes on a small machine)::

    uv run python packages/bench/scripts/bad_input_campaign.py [--verbose] [--json OUT]

Every input is run through the ``bench`` CLI (in-process ``main``) or a public Python function, in
a fresh temporary folder, and classified as:

* ``clear``: CLI exit 2 with exactly one stderr line naming the input; API raises a ValueError or
  TypeError (the package's error classes) whose message names the input;
* ``unclear``: refused, but the message does not name the input or is not one line;
* ``traceback``: a traceback reached the user (CLI), or an exception of another type (API);
* ``silent``: accepted although it is wrong (exit 0, no exception);
* ``partial``: in addition to the above, files were left behind or an existing output changed.

These inputs are deliberately different from the cases of ``tests/test_bad_inputs.py``: the
campaign looks for classes of failure the suite does not yet pin down.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

try:  # after the package relayout
    from ctsynth_bench import rulesynth as rs
    from ctsynth_bench.viz import make_gallery, render_views
except ImportError:  # before it
    from ctsynth_bench import synth as rs  # type: ignore[no-redef]
    from ctsynth_bench.synth import make_gallery  # type: ignore[no-redef]
    from ctsynth_bench.viz import render_views  # type: ignore[no-redef]
from ctsynth_bench import data
from ctsynth_bench.cli import main

SHAPE = (48, 40, 32)


def _ellipsoid(centre, radii):
    grid = np.indices(SHAPE, dtype=np.float64)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small abdomen (ct HU, organs int16, affine), RAS, 4 mm voxels."""
    rng = np.random.default_rng(1)
    ct = np.full(SHAPE, -1000.0)
    ct[_ellipsoid((24, 20, 16), (22, 17, 40))] = -100.0
    inner = _ellipsoid((24, 20, 16), (19, 14, 40))
    ct[inner] = 40.0
    organs = np.zeros(SHAPE, dtype=np.int16)
    for label, centre, radii, hu in [
        (5, (33, 22, 16), (9, 8, 10), 60.0),
        (1, (13, 24, 16), (5, 5, 6), 50.0),
        (2, (30, 12, 14), (3, 3, 5), 150.0),
        (3, (17, 12, 14), (3, 3, 5), 150.0),
    ]:
        region = _ellipsoid(centre, radii) & inner
        organs[region] = label
        ct[region] = hu
    ct += rng.normal(0.0, 8.0, SHAPE) * (ct > -500)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (-96.0, -80.0, -64.0)
    return ct.astype(np.float32), organs, affine


def save(path: Path, arr, affine) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(arr)
    nib.save(nib.Nifti1Image(arr, affine, dtype=arr.dtype), str(path))
    return path


def snapshot(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    if not path.is_dir():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()} if path.is_file() else {}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@dataclass
class Ctx:
    """Per-input scratch folder with a valid template pair and a finished small dataset."""

    root: Path
    ct: Path
    organs: Path
    made: Path  # a finished dataset (copy of a shared one)

    @property
    def pair(self) -> str:
        return f"{self.ct}:{self.organs}"

    def lesions(self, out, *extra) -> list[str]:
        return ["data", "lesions", "--n", "2", "--out", str(out), "--template-files", self.pair,
                "--types", "liver_cyst", "--no-progress", *map(str, extra)]  # fmt: skip


@dataclass
class Input:
    cls: str
    name: str
    run: Callable[[Ctx], object]  # returns argv (CLI) or calls the API
    needle: str | Callable[[Ctx], str]
    kind: str = "cli"
    watch: Callable[[Ctx], Path] | None = None  # folder that must stay unchanged / empty


def cli(cls, name, argv, needle, watch=None) -> Input:
    return Input(cls, name, argv, needle, "cli", watch)


def api(cls, name, fn, needle, watch=None) -> Input:
    return Input(cls, name, fn, needle, "api", watch)


def _variant(ctx: Ctx, change: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple]) -> str:
    ct, organs, affine = phantom()
    out = change(ct, organs, affine)
    ct2, org2, aff_ct, aff_org = out
    folder = ctx.root / "variant"
    save(folder / "ct.nii.gz", ct2, aff_ct)
    save(folder / "organs.nii.gz", org2, aff_org)
    return f"{folder / 'ct.nii.gz'}:{folder / 'organs.nii.gz'}"


def _rot90(ct, organs, affine):
    rot = affine.copy()
    rot[:3, :2] = affine[:3, [1, 0]] * np.array([[-1, 1]])
    return ct, organs, affine, rot


def _relabel(ct, organs, affine, value, dtype=None):
    o = organs.astype(dtype) if dtype else organs.copy()
    o[organs == 1] = value
    return ct, o, affine, affine


def inputs() -> list[Input]:
    out = lambda c: c.root / "out"  # noqa: E731
    made = lambda c: c.made  # noqa: E731
    L: list[Input] = []
    # --- data that must be refused --------------------------------------------------------
    variants = {
        "organs 2 mm off": (lambda ct, o, a: (ct, o, a, a + _t(2))),
        "organs rotated 90 deg": _rot90,
        "CT all air": (lambda ct, o, a: (np.full_like(ct, -1000.0), o, a, a)),
        "CT x1000": (lambda ct, o, a: (ct * 1000.0, o, a, a)),
        "CT inverted sign": (lambda ct, o, a: (-ct, o, a, a)),
        "CT as uint8 0..255": (
            lambda ct, o, a: (np.clip((ct + 1000) / 8, 0, 255).astype(np.uint8), o, a, a)
        ),
        "organs id 255 (uint8)": (lambda ct, o, a: _relabel(ct, o, a, 255, np.uint8)),
        "organs float with NaN": (lambda ct, o, a: _relabel(ct, o, a, np.nan, np.float32)),
        "organs all zero": (lambda ct, o, a: (ct, np.zeros_like(o), a, a)),
        "organs transposed x/y": (
            lambda ct, o, a: (ct[:, :, :], np.ascontiguousarray(o.transpose(1, 0, 2)), a, a)
        ),
        "organ map given as CT": (lambda ct, o, a: (o.astype(np.float32), o, a, a)),
        "CT given as organ map": (lambda ct, o, a: (ct, ct, a, a)),
        "organs id 0.5 everywhere": (lambda ct, o, a: (ct, (o > 0) * 0.5, a, a)),
        "affine with NaN": (lambda ct, o, a: (ct, o, _nan_aff(a), _nan_aff(a))),
    }
    for name, change in variants.items():
        L.append(
            cli(
                "refuse",
                name,
                lambda c, ch=change: _with(c, out(c), _variant(c, ch)),
                "nii.gz",
                out,
            )
        )
        L.append(
            api(
                "refuse",
                f"API {name}",
                lambda c, ch=change: rs.template_from_files(*_variant(c, ch).split(":")),
                "nii.gz",
            )
        )
    L += [
        cli(
            "refuse",
            "pair without colon",
            lambda c: _with(c, out(c), str(c.ct)),
            "--template-files",
            out,
        ),
        cli(
            "refuse",
            "pair with empty organ path",
            lambda c: _with(c, out(c), f"{c.ct}:"),
            "--template-files",
            out,
        ),
        cli(
            "refuse",
            "pair of one file twice",
            lambda c: _with(c, out(c), f"{c.ct}:{c.ct}"),
            "ct.nii.gz",
            out,
        ),
        cli(
            "refuse",
            "zero-byte CT",
            lambda c: _with(c, out(c), f"{_touch(c.root / 'z.nii.gz')}:{c.organs}"),
            "z.nii.gz",
            out,
        ),
        cli(
            "refuse",
            "gzip of text as CT",
            lambda c: _with(c, out(c), f"{_gz(c.root / 't.nii.gz')}:{c.organs}"),
            "t.nii.gz",
            out,
        ),
        cli(
            "refuse",
            "directory as CT",
            lambda c: _with(c, out(c), f"{c.root}:{c.organs}"),
            lambda c: str(c.root),
            out,
        ),
        api(
            "refuse",
            "Template spacing zero",
            lambda c: rs.Template(
                name="t",
                ct=phantom()[0],
                organs=phantom()[1],
                affine=phantom()[2],
                spacing=(0.0, 0.0, 0.0),
            ),
            "spacing",
        ),
        api(
            "refuse",
            "Template ct 2D",
            lambda c: rs.Template(
                name="t",
                ct=phantom()[0][:, :, 0],
                organs=phantom()[1][:, :, 0],
                affine=phantom()[2],
                spacing=(4.0,) * 3,
            ),
            "3D",
        ),
        api(
            "refuse",
            "Template organs bool",
            lambda c: rs.Template(
                name="t",
                ct=phantom()[0],
                organs=np.zeros(SHAPE, bool),
                affine=phantom()[2],
                spacing=(4.0,) * 3,
            ),
            "organ",
        ),
    ]
    # --- paths ----------------------------------------------------------------------------
    L += [
        cli("paths", "--out empty string", lambda c: c.lesions(""), "--out"),
        cli("paths", "--out /dev/null", lambda c: c.lesions("/dev/null"), "/dev/null"),
        cli(
            "paths",
            "--out under /proc",
            lambda c: c.lesions("/proc/ctsynth-out"),
            "/proc/ctsynth-out",
        ),
        cli("paths", "--out a symlink to a file", lambda c: c.lesions(_link_to_file(c)), "link"),
        cli(
            "paths",
            "show --out /dev/full",
            lambda c: ["data", "show", "chest", "--out", "/dev/full"],
            "/dev/full",
        ),
        cli(
            "paths",
            "show --out under /proc",
            lambda c: ["data", "show", "chest", "--out", "/proc/v.png"],
            "/proc/v.png",
        ),
        cli(
            "paths",
            "gallery into /dev/full",
            lambda c: ["data", "lesions", "--stats", str(c.made), "--gallery", "/dev/full"],
            "/dev/full",
            made,
        ),
        cli(
            "paths",
            "gallery = the dataset folder",
            lambda c: ["data", "lesions", "--stats", str(c.made), "--gallery", str(c.made)],
            "--gallery",
            made,
        ),
        cli(
            "paths",
            "fetch --cache-dir a file",
            lambda c: [
                "data",
                "fetch",
                "--cache-dir",
                str(_touch(c.root / "cachefile")),
                "--case",
                "abdomen",
            ],
            "cachefile",
        ),
        cli(
            "paths",
            "fetch --cache-dir under /proc",
            lambda c: ["data", "fetch", "--cache-dir", "/proc/ctsynth-cache", "--case", "abdomen"],
            "/proc/ctsynth-cache",
        ),
        cli(
            "paths",
            "list --cache-dir a file",
            lambda c: ["data", "list", "--cache-dir", str(_touch(c.root / "cachefile"))],
            "cachefile",
        ),
        cli(
            "paths",
            "--stats on a file",
            lambda c: ["data", "lesions", "--stats", str(_touch(c.root / "f.txt"))],
            "f.txt",
        ),
        cli(
            "paths",
            "--stats on an empty folder",
            lambda c: ["data", "lesions", "--stats", str(_mkdir(c.root / "empty"))],
            "empty",
        ),
        cli(
            "paths",
            "--stats on a missing folder",
            lambda c: ["data", "lesions", "--stats", str(c.root / "nope")],
            "nope",
        ),
        cli(
            "paths",
            "--stats with a label missing",
            lambda c: ["data", "lesions", "--stats", str(_drop(c.made, "labelsTr"))],
            "labelsTr",
            None,
        ),
        cli(
            "paths",
            "--stats with an organ map truncated",
            lambda c: ["data", "lesions", "--stats", str(_truncate(c.made, "organs"))],
            "organs",
            None,
        ),
        cli(
            "paths",
            "show --dataset with an image truncated",
            lambda c: [
                "data",
                "show",
                _first_case(c.made),
                "--dataset",
                str(_truncate(c.made, "imagesTr")),
                "--out",
                str(c.root / "v.png"),
            ],
            "imagesTr",
            None,
        ),
        api(
            "paths",
            "render_views out=/dev/full",
            lambda c: render_views(
                phantom()[0], label=phantom()[1] == 5, spacing=(4.0,) * 3, out="/dev/full"
            ),
            "/dev/full",
        ),
        api(
            "paths",
            "make_gallery out under a file",
            lambda c: make_gallery(c.made, _touch(c.root / "f") / "g.png"),
            "f",
        ),
        api(
            "paths",
            "fetch cache_dir is a file",
            lambda c: data.fetch(_touch(c.root / "cf"), cases=["abdomen"], progress=False),
            "cf",
        ),
        api(
            "paths",
            "synthesize_dataset out=/proc/x",
            lambda c: rs.synthesize_dataset("/proc/ctsynth-x", n=1, templates=[_template(c)]),
            "/proc/ctsynth-x",
        ),
    ]
    # --- errors that must say what is wrong ----------------------------------------------
    L += [
        cli("errors", "--seed abc", lambda c: c.lesions(out(c), "--seed", "abc"), "--seed", out),
        cli("errors", "--n 1.5", lambda c: c.lesions(out(c), "--n", "1.5"), "--n", out),
        cli("errors", "--n 10**12", lambda c: c.lesions(out(c), "--n", str(10**12)), "--n", out),
        cli(
            "errors",
            "--types empty string",
            lambda c: c.lesions(out(c), "--types", ""),
            "--types",
            out,
        ),
        cli(
            "errors",
            "--types organ name",
            lambda c: c.lesions(out(c), "--types", "liver"),
            "liver",
            out,
        ),
        cli(
            "errors",
            "--templates unknown",
            lambda c: [
                "data",
                "lesions",
                "--n",
                "1",
                "--out",
                str(out(c)),
                "--templates",
                "pelvis",
            ],
            "pelvis",
            out,
        ),
        cli(
            "errors",
            "show --label 999",
            lambda c: ["data", "show", "chest", "--label", "999", "--out", str(c.root / "v.png")],
            "999",
            out,
        ),
        cli(
            "errors",
            "show --label -1",
            lambda c: ["data", "show", "chest", "--label", "-1", "--out", str(c.root / "v.png")],
            "-1",
            out,
        ),
        cli(
            "errors",
            "show --window 40",
            lambda c: ["data", "show", "chest", "--window", "40", "--out", str(c.root / "v.png")],
            "--window",
        ),
        cli(
            "errors",
            "show --window 40,-400",
            lambda c: [
                "data",
                "show",
                "chest",
                "--window",
                "40,-400",
                "--out",
                str(c.root / "v.png"),
            ],
            "--window",
        ),
        cli(
            "errors",
            "show --window nan,400",
            lambda c: [
                "data",
                "show",
                "chest",
                "--window",
                "nan,400",
                "--out",
                str(c.root / "v.png"),
            ],
            "--window",
        ),
        cli(
            "errors",
            "show unknown case",
            lambda c: ["data", "show", "abdomenn", "--out", str(c.root / "v.png")],
            "abdomenn",
        ),
        cli(
            "errors",
            "fetch --case typo",
            lambda c: ["data", "fetch", "--case", "lung3", "--cache-dir", str(c.root / "cache")],
            "lung3",
        ),
        cli(
            "errors",
            "case.json is a list",
            lambda c: ["data", "list", "--cache-dir", str(_cache_with_case_json(c, "[]"))],
            "case.json",
        ),
        cli(
            "errors",
            "case.json is binary",
            lambda c: [
                "data",
                "list",
                "--cache-dir",
                str(_cache_with_case_json(c, b"\xff\xfe\x00")),
            ],
            "case.json",
        ),
        cli(
            "errors",
            "dataset.json corrupt under --stats",
            lambda c: ["data", "lesions", "--stats", str(_corrupt(c.made, "dataset.json"))],
            "dataset.json",
            None,
        ),
        cli(
            "errors",
            "report without lesion_type",
            lambda c: [
                "data",
                "lesions",
                "--stats",
                str(_report_edit(c.made, lambda r: r.pop("lesion_type"))),
            ],
            "lesion_type",
            None,
        ),
        cli(
            "errors",
            "report with unknown type",
            lambda c: [
                "data",
                "lesions",
                "--stats",
                str(_report_edit(c.made, lambda r: r.update(lesion_type="wart"))),
            ],
            "wart",
            None,
        ),
        cli(
            "errors",
            "synth.json is a list on resume",
            lambda c: c.lesions(_corrupt(c.made, "synth.json", "[]")),
            "synth.json",
            made,
        ),
        api(
            "errors",
            "synthesize_dataset n=2.5",
            lambda c: rs.synthesize_dataset(c.root / "o", n=2.5, templates=[_template(c)]),
            "n",
            out,
        ),
        api(
            "errors",
            "synthesize_dataset seed='a'",
            lambda c: rs.synthesize_dataset(
                c.root / "out", n=1, seed="a", templates=[_template(c)]
            ),
            "seed",
            out,
        ),
        api(
            "errors",
            "synthesize_dataset types a string",
            lambda c: rs.synthesize_dataset(
                c.root / "out", n=1, types="liver_cyst", templates=[_template(c)]
            ),
            "types",
            out,
        ),
        api(
            "errors",
            "synthesize_dataset prefix with ../",
            lambda c: rs.synthesize_dataset(
                c.root / "out",
                n=1,
                prefix="../evil",
                types=["liver_cyst"],
                templates=[_template(c)],
            ),
            "prefix",
            lambda c: c.root,
        ),
        api(
            "errors",
            "synthesize_dataset templates not templates",
            lambda c: rs.synthesize_dataset(c.root / "out", n=1, templates=["abdomen"]),
            "templates",
            out,
        ),
        api(
            "errors",
            "fetch cases a string",
            lambda c: data.fetch(c.root / "cache", cases="abdomen", progress=False),
            "cases",
        ),
        api(
            "errors",
            "render_views label shape differs",
            lambda c: render_views(
                phantom()[0], label=phantom()[1][:-1] == 5, spacing=(4.0,) * 3, out=c.root / "v.png"
            ),
            "label",
        ),
        api(
            "errors",
            "render_views window width 0",
            lambda c: render_views(
                phantom()[0],
                label=phantom()[1] == 5,
                spacing=(4.0,) * 3,
                window=(40.0, 0.0),
                out=c.root / "v.png",
            ),
            "window",
        ),
        api(
            "errors",
            "make_gallery types unknown",
            lambda c: make_gallery(c.made, c.root / "g.png", types=("wart",)),
            "wart",
        ),
        api(
            "errors",
            "load_and_measure missing",
            lambda c: rs.load_and_measure(c.root / "nope"),
            "nope",
        ),
    ]
    # --- state that misleads -----------------------------------------------------------------
    L += [
        cli(
            "state",
            "--out a non-empty foreign folder",
            lambda c: c.lesions(_foreign(c)),
            "foreign",
            lambda c: c.root / "foreign",
        ),
        cli(
            "state",
            "--templates twice the same",
            lambda c: [
                "data",
                "lesions",
                "--n",
                "1",
                "--out",
                str(out(c)),
                "--templates",
                "chest",
                "chest",
                "--types",
                "lung_cancer",
            ],
            "chest",
            out,
        ),
        cli(
            "state",
            "--types twice the same",
            lambda c: c.lesions(out(c), "--types", "liver_cyst", "liver_cyst"),
            "liver_cyst",
            out,
        ),
        cli(
            "state",
            "--stats with --types",
            lambda c: ["data", "lesions", "--stats", str(c.made), "--types", "liver_cyst"],
            "--types",
            made,
        ),
        cli(
            "state",
            "--stats with --seed",
            lambda c: ["data", "lesions", "--stats", str(c.made), "--seed", "3"],
            "--seed",
            made,
        ),
        cli(
            "state",
            "--stats with --template-files",
            lambda c: ["data", "lesions", "--stats", str(c.made), "--template-files", c.pair],
            "--template-files",
            made,
        ),
        cli(
            "state",
            "--no-deform on a deformed set",
            lambda c: c.lesions(c.made, "--no-deform"),
            "deform",
            made,
        ),
        cli(
            "state",
            "show --dataset with --cache-dir",
            lambda c: [
                "data",
                "show",
                _first_case(c.made),
                "--dataset",
                str(c.made),
                "--cache-dir",
                str(c.root),
                "--out",
                str(c.root / "v.png"),
            ],
            "--cache-dir",
        ),
    ]
    return L


def inputs_round2() -> list[Input]:
    """A second batch, invented after the first batch's failures were fixed (never tuned to)."""
    out = lambda c: c.root / "out"  # noqa: E731
    made = lambda c: c.made  # noqa: E731
    L: list[Input] = [
        cli(
            "refuse",
            "organ spacing 3 mm vs CT 4 mm",
            lambda c: _with(
                c,
                out(c),
                _variant(c, lambda ct, o, a: (ct, o, a, a @ np.diag([0.75, 0.75, 0.75, 1.0]))),
            ),
            "affine",
            out,
        ),
        cli(
            "refuse",
            "organ ids int64 2**40",
            lambda c: _with(
                c, out(c), _variant(c, lambda ct, o, a: _relabel(ct, o, a, 2**40, np.int64))
            ),
            "nii.gz",
            out,
        ),
        cli(
            "refuse",
            "CT with a 5D shape",
            lambda c: _with(
                c, out(c), _variant(c, lambda ct, o, a: (ct[..., None, None].repeat(2, 3), o, a, a))
            ),
            "5D",
            out,
        ),
        cli(
            "refuse",
            "text file named .nrrd as CT",
            lambda c: _with(c, out(c), f"{_text(c.root / 'ct.nrrd')}:{c.organs}"),
            "ct.nrrd",
            out,
        ),
        cli(
            "refuse",
            "CT .png as template",
            lambda c: _with(c, out(c), f"{_text(c.root / 'ct.png')}:{c.organs}"),
            "ct.png",
            out,
        ),
        cli(
            "refuse",
            "CT path with a colon",
            lambda c: _with(c, out(c), f"C:{c.ct}:{c.organs}"),
            "C",
            out,
        ),
        cli(
            "paths",
            "show --out .jpg",
            lambda c: ["data", "show", "chest", "--out", str(c.root / "v.jpg")],
            "--out",
        ),
        cli(
            "paths",
            "--stats where reports is a file",
            lambda c: ["data", "lesions", "--stats", str(_reports_file(c.made)), "--no-progress"],
            "reports",
            None,
        ),
        cli(
            "paths",
            "fetch --cache-dir empty string (cwd = case folder)",
            lambda c: ["data", "fetch", "--case", "abdomen", "--cache-dir", ""],
            "--cache-dir",
            lambda c: c.root / "cwd",
        ),
        cli(
            "paths",
            "show --dataset a file",
            lambda c: [
                "data",
                "show",
                "x",
                "--dataset",
                str(_touch(c.root / "ds")),
                "--out",
                str(c.root / "v.png"),
            ],
            "ds",
        ),
        cli(
            "errors",
            "--types Liver_Cyst",
            lambda c: c.lesions(out(c), "--types", "Liver_Cyst"),
            "Liver_Cyst",
            out,
        ),
        cli(
            "errors",
            "--templates a file path",
            lambda c: [
                "data",
                "lesions",
                "--n",
                "1",
                "--out",
                str(out(c)),
                "--templates",
                str(c.ct),
            ],
            "ct.nii.gz",
            out,
        ),
        cli("errors", "--seed 1e3", lambda c: c.lesions(out(c), "--seed", "1e3"), "--seed", out),
        cli("errors", "unknown option --nn", lambda c: ["data", "lesions", "--nn", "3"], "--nn"),
        cli("errors", "lesions without options", lambda c: ["data", "lesions"], "--out"),
        cli(
            "errors",
            "show without a case",
            lambda c: ["data", "show", "--out", str(c.root / "v.png")],
            "CASE",
        ),
        cli(
            "errors",
            "show --label 0 without lesion",
            lambda c: ["data", "show", "abdomen", "--label", "0", "--out", str(c.root / "v.png")],
            "lesion",
        ),
        cli(
            "state",
            "--stats with --no-deform",
            lambda c: ["data", "lesions", "--stats", str(c.made), "--no-deform"],
            "--no-deform",
            made,
        ),
        cli(
            "state",
            "resume with other --types",
            lambda c: c.lesions(c.made, "--types", "kidney_cyst"),
            "types",
            made,
        ),
        api(
            "refuse",
            "Template name None",
            lambda c: rs.Template(
                name=None,
                ct=phantom()[0],
                organs=phantom()[1],
                affine=phantom()[2],
                spacing=(4.0,) * 3,
            ),
            "name",
        ),
        api(
            "refuse",
            "Template lesion 2D",
            lambda c: rs.Template(
                name="t",
                ct=phantom()[0],
                organs=phantom()[1],
                affine=phantom()[2],
                spacing=(4.0,) * 3,
                lesion=np.zeros((4, 4), np.uint8),
            ),
            "lesion",
        ),
        api(
            "errors", "load_volume_set ct=None", lambda c: data.load_volume_set("x", ct=None), "ct"
        ),
        api(
            "errors",
            "template_from_files(None, None)",
            lambda c: rs.template_from_files(None, None),
            "ct",
        ),
        api(
            "errors",
            "render_views spacing of 2",
            lambda c: render_views(phantom()[0], spacing=(4.0, 4.0), out=c.root / "v.png"),
            "spacing",
        ),
        api(
            "errors",
            "render_views ct with NaN",
            lambda c: render_views(
                np.full(SHAPE, np.nan, np.float32), spacing=(4.0,) * 3, out=c.root / "v.png"
            ),
            "ct",
        ),
        api("errors", "load_case empty name", lambda c: data.load_case("", c.root / "cache"), "''"),
        api(
            "errors",
            "save_nifti below a file",
            lambda c: data.save_nifti(
                _touch(c.root / "f") / "x.nii.gz", phantom()[1], phantom()[2], dtype="uint8"
            ),
            "f",
        ),
        api(
            "errors",
            "make_gallery root is a file",
            lambda c: make_gallery(_touch(c.root / "r"), c.root / "g.png"),
            "r",
        ),
        api(
            "errors",
            "synthesize_dataset n numpy int",
            lambda c: _expect_ok(
                rs.synthesize_dataset(
                    c.root / "o", n=np.int64(1), types=["liver_cyst"], templates=[_template(c)]
                )
            ),
            "n",
        ),
    ]
    return L


def _expect_ok(summary) -> None:
    """A valid input that must be accepted: raise if it was refused (reported as a finding)."""
    raise _Valid(f"accepted: wrote {summary.written}")


class _Valid(Exception):
    pass


def _text(p: Path) -> Path:
    p.write_text("plain text\n")
    return p


def _reports_file(root: Path) -> Path:
    shutil.rmtree(root / "reports")
    (root / "reports").write_text("x")
    return root


# small helpers used by the table ---------------------------------------------------------------


def _t(mm: float) -> np.ndarray:
    m = np.zeros((4, 4))
    m[0, 3] = mm
    return m


def _nan_aff(a):
    b = a.copy()
    b[0, 3] = np.nan
    return b


def _with(c: Ctx, out: Path, pair: str) -> list[str]:
    argv = c.lesions(out)
    argv[argv.index("--template-files") + 1] = pair
    return argv


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _gz(p: Path) -> Path:
    import gzip

    p.write_bytes(gzip.compress(b"hello, not an image\n"))
    return p


def _link_to_file(c: Ctx) -> Path:
    target = _touch(c.root / "target.txt")
    link = c.root / "link"
    link.symlink_to(target)
    return link


def _first_case(root: Path) -> str:
    return sorted((root / "reports").glob("*.json"))[0].stem


def _drop(root: Path, sub: str) -> Path:
    sorted((root / sub).glob("*.nii.gz"))[0].unlink()
    return root


def _truncate(root: Path, sub: str) -> Path:
    f = sorted((root / sub).glob("*.nii.gz"))[0]
    f.write_bytes(f.read_bytes()[:300])
    return root


def _corrupt(root: Path, name: str, text: str = "{oops") -> Path:
    (root / name).write_text(text)
    return root


def _report_edit(root: Path, edit) -> Path:
    p = sorted((root / "reports").glob("*.json"))[0]
    r = json.loads(p.read_text())
    edit(r)
    p.write_text(json.dumps(r))
    return root


def _cache_with_case_json(c: Ctx, content) -> Path:
    case = c.root / "cache" / "cases" / "lung2"
    shutil.copytree(data.bundled_dir() / "chest", case)
    if isinstance(content, bytes):
        (case / "case.json").write_bytes(content)
    else:
        (case / "case.json").write_text(content)
    return c.root / "cache"


def _foreign(c: Ctx) -> Path:
    f = c.root / "foreign"
    f.mkdir()
    (f / "thesis.tex").write_text("\\documentclass{article}\n")
    return f


def _template(c: Ctx):
    return rs.template_from_files(c.ct, c.organs)


# running ---------------------------------------------------------------------------------------


class _Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise _Hang


def classify(item: Input, ctx: Ctx) -> tuple[str, bool, str]:
    """Run one input under a 120 s alarm (a run that does not end is a finding too)."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(120)
    try:
        return _classify(item, ctx)
    except _Hang:
        return "hang", False, "still running after 120 s"
    finally:
        signal.alarm(0)


def _classify(item: Input, ctx: Ctx) -> tuple[str, bool, str]:
    watch = item.watch(ctx) if item.watch else None
    if item.kind == "cli":
        argv = item.run(ctx)
        before = snapshot(watch) if watch else None
        err, outbuf = io.StringIO(), io.StringIO()
        tb = ""
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outbuf):
            try:
                rc = main([str(a) for a in argv])
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except _Hang:
                raise
            except BaseException:
                rc, tb = -1, traceback.format_exc()
        text = err.getvalue() + tb
        # progress bars (tqdm, on stderr) are not messages
        lines = [
            ln
            for ln in err.getvalue().replace("\r", "\n").splitlines()
            if ln.strip() and not re.search(r"\d+%\|", ln)
        ]
        needle = item.needle(ctx) if callable(item.needle) else item.needle
        if tb or "Traceback" in text:
            verdict = "traceback"
        elif rc == 0:
            verdict = "silent"
        elif rc == 2 and len(lines) == 1 and needle in lines[0]:
            verdict = "clear"
        else:
            verdict = "unclear"
        message = (lines[-1] if lines else "") if not tb else tb.strip().splitlines()[-1]
    else:
        before = snapshot(watch) if watch else None
        needle = item.needle(ctx) if callable(item.needle) else item.needle
        try:
            item.run(ctx)
        except (ValueError, TypeError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            verdict = "clear" if needle in str(exc) else "unclear"
            message = f"{type(exc).__name__}: {message}"
        except _Valid as exc:
            message, verdict = str(exc), "clear"
        except OSError as exc:
            message = f"{type(exc).__name__}: {exc}"
            verdict = "clear" if exc.filename and needle in str(exc) else "traceback"
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            verdict = "traceback"
        else:
            message, verdict = "accepted", "silent"
    after = snapshot(watch) if watch else None
    partial = bool(watch) and after != before and not (before is None and not after)
    return verdict, partial, message[:300]


def main_campaign() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--round", type=int, choices=(1, 2), default=1, help="which batch of inputs")
    args = ap.parse_args()
    os.environ.setdefault("CTSYNTH_CACHE", tempfile.mkdtemp(prefix="ctsynth-campaign-cache-"))
    results = []
    with tempfile.TemporaryDirectory(prefix="ctsynth-campaign-") as tmp:
        base = Path(tmp)
        ct, organs, affine = phantom()
        ct_p = save(base / "tpl" / "ct.nii.gz", ct, affine)
        org_p = save(base / "tpl" / "organs.nii.gz", organs, affine)
        made = base / "made"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            rc = main(["data", "lesions", "--n", "2", "--out", str(made), "--template-files",
                       f"{ct_p}:{org_p}", "--types", "liver_cyst", "--no-progress"])  # fmt: skip
        assert rc == 0, "the valid run failed"
        for k, item in enumerate(inputs() if args.round == 1 else inputs_round2()):
            root = base / f"case{k:03d}"
            root.mkdir()
            shutil.copytree(made, root / "made")
            ctx = Ctx(root=root, ct=ct_p, organs=org_p, made=root / "made")
            (root / "cwd").mkdir()
            os.chdir(root / "cwd")  # relative paths ('' included) land in a watched folder
            try:
                verdict, partial, message = classify(item, ctx)
            except Exception as exc:
                verdict, partial, message = "harness", False, f"{type(exc).__name__}: {exc}"
            results.append({"class": item.cls, "input": item.name, "via": item.kind,
                            "verdict": verdict, "partial": partial, "message": message})  # fmt: skip
            if args.verbose or verdict != "clear" or partial:
                flag = " +partial" if partial else ""
                print(f"[{verdict}{flag}] {item.cls}/{item.name} ({item.kind}): {message}")
    counts = Counter(r["verdict"] for r in results)
    print(
        f"\n{len(results)} inputs ({sum(r['via'] == 'cli' for r in results)} CLI, "
        f"{sum(r['via'] == 'api' for r in results)} API): "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f"; partial files {sum(r['partial'] for r in results)}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_campaign())
