"""Workspace consistency: every member is a well-formed, separately installable package."""

from __future__ import annotations

import ast
import re
import tomllib
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())
LIBRARIES = ["report-bbox", "shape-metrics", "ct-autoencoder", "lesion-inpaint", "cat-diffusion"]
#: folder name -> distribution name where they differ (``bench`` is taken on PyPI).
DIST_EXCEPTIONS = {"bench": "ctsynth-bench"}


def _project(pkg: Path) -> dict:
    return tomllib.loads((pkg / "pyproject.toml").read_text())["project"]


def _import_name(pkg: Path) -> str:
    data = tomllib.loads((pkg / "pyproject.toml").read_text())
    return data["tool"]["uv"]["build-backend"]["module-name"]


def _members() -> dict[str, Path]:
    return {_project(p)["name"]: p for p in PACKAGES}


def test_all_six_members_exist() -> None:
    assert sorted(_members()) == sorted([*LIBRARIES, "ctsynth-bench"])


def test_root_is_virtual_and_lists_every_member_as_source() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "project" not in root
    assert root["tool"]["uv"]["workspace"]["members"] == ["packages/*"]
    sources = root["tool"]["uv"]["sources"]
    for name in _members():
        assert sources.get(name) == {"workspace": True}, name
    assert "pytest" in " ".join(root["dependency-groups"]["dev"])


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_member_layout(pkg: Path) -> None:
    project = _project(pkg)
    assert project["name"] == DIST_EXCEPTIONS.get(pkg.name, pkg.name)
    assert "version" in project and "version" not in project.get("dynamic", [])
    Version(project["version"])  # a valid static version
    assert (pkg / "README.md").is_file()
    imp = _import_name(pkg)
    src = pkg / "src" / imp
    assert (src / "py.typed").is_file()
    init = (src / "__init__.py").read_text()
    assert "__all__" in init and "importlib.metadata" in init
    assert (pkg / "tests").is_dir()
    assert not (pkg / "tests" / "__init__.py").exists(), "tests/ must not be a package"
    build = tomllib.loads((pkg / "pyproject.toml").read_text())["build-system"]
    assert build["build-backend"] == "uv_build"


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_sibling_requirements_are_pinned_and_satisfied(pkg: Path) -> None:
    members = _members()
    for raw in _project(pkg).get("dependencies", []):
        req = Requirement(raw)
        if req.name not in members:
            continue
        assert str(req.specifier), f"{pkg.name}: sibling requirement {raw!r} has no specifier"
        sibling_version = _project(members[req.name])["version"]
        assert req.specifier.contains(sibling_version), (
            f"{pkg.name} requires {raw!r} but {req.name} is {sibling_version}"
        )


def test_bench_depends_on_every_library_with_a_range() -> None:
    deps = {Requirement(d).name: Requirement(d) for d in _project(_members()["ctsynth-bench"])["dependencies"]}
    for lib in LIBRARIES:
        assert lib in deps
        assert str(deps[lib].specifier) in {">=0.1,<0.2", "<0.2,>=0.1"}
    assert _project(_members()["ctsynth-bench"])["scripts"]["bench"] == "ctsynth_bench.cli:main"


def _imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("lib", LIBRARIES)
def test_libraries_never_import_each_other(lib: str) -> None:
    members = _members()
    own = _import_name(members[lib])
    others = {_import_name(members[o]) for o in [*LIBRARIES, "ctsynth-bench"] if o != lib}
    offenders = []
    for path in (members[lib]).rglob("*.py"):
        bad = _imported_top_modules(path) & others
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, f"{own} must not import sibling packages: {offenders}"
    deps = {Requirement(d).name for d in _project(members[lib]).get("dependencies", [])}
    assert not deps & set(members), f"{lib} declares sibling dependencies {deps & set(members)}"


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_installed_version_matches_pyproject(pkg: Path) -> None:
    project = _project(pkg)
    assert installed_version(project["name"]) == project["version"]


def test_no_lock_file_or_registry_host_is_tracked() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "uv.lock" in ignored
    for path in ROOT.glob("**/*.toml"):
        if ".venv" in path.parts:
            continue
        assert not re.search(r"index-url|https?://\S*(pypi|simple)", path.read_text()), path
