"""GuideGen prompts: the authors' template, its fields, sampling and strict parsing.

A prompt follows the template of the GuideGen paper (Dai et al., AAAI 2026, Sec. 4)::

    The patient is a {age}-year-old {race} {sex}. In this imaging, the patient's condition is
    described as {site} cancer, T{t} N{n} M{m}, {count} primary tumour(s), {large|small}.

Every field is kept as a label (:class:`PromptFields`), so prompt alignment can be scored. The
demo vocabulary (:data:`SITES`, :data:`COUNTS`) is what the demo set contains; a prompt outside it,
or with fields that contradict each other (a ``small`` tumour staged T3/T4, a ``large`` one T1/T2),
is refused with one line that lists what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..exceptions import BenchError

__all__ = [
    "COUNTS",
    "PROMPT_TEMPLATE",
    "RACES",
    "SEXES",
    "SITES",
    "SIZES",
    "PromptError",
    "PromptFields",
    "parse_prompt",
    "prompt_bank",
    "sample_fields",
]

#: Tumour sites of the demo vocabulary -> the GuideGen class the tumour lies in or on.
SITES: dict[str, str] = {
    "liver": "liver",
    "kidney": "kidney",
    "spleen": "spleen",
    "stomach": "stomach",
    "lung": "lung",
}
#: Allowed primary-tumour counts per site (small organs hold at most two separate tumours at the
#: demo grid's 24 mm voxels).
COUNTS: dict[str, tuple[int, ...]] = {
    "liver": (1, 2, 3),
    "kidney": (1, 2),
    "spleen": (1, 2),
    "stomach": (1, 2),
    "lung": (1, 2, 3),
}
SIZES = ("small", "large")
#: T stages that agree with each size (T1-T2 small, T3-T4 large).
T_FOR_SIZE: dict[str, tuple[int, ...]] = {"small": (1, 2), "large": (3, 4)}
RACES = ("white", "black", "asian", "hispanic")
SEXES = ("male", "female")
AGES = (20, 95)

PROMPT_TEMPLATE = (
    "The patient is a {age}-year-old {race} {sex}. In this imaging, the patient's condition is "
    "described as {site} cancer, T{t} N{n} M{m}, {count} primary {tumours}, {size}."
)

_PATTERN = re.compile(
    r"^\s*the patient is an? (?P<age>\d+)[- ]year[- ]old (?P<race>[a-z]+) (?P<sex>[a-z]+)\.\s*"
    r"in this imaging,? the patient'?s condition is described as (?P<site>[a-z ]+?) cancer,\s*"
    r"t(?P<t>\d)\s+n(?P<n>\d)\s+m(?P<m>\d),\s*(?P<count>\d+) primary tumou?rs?(?:\(s\))?,\s*"
    r"(?P<size>[a-z]+)\.?\s*$",
    re.IGNORECASE,
)


class PromptError(BenchError):
    """A prompt that does not follow the template or leaves the demo vocabulary."""


def _allowed() -> str:
    sites = ", ".join(f"{s} (count {'/'.join(map(str, COUNTS[s]))})" for s in SITES)
    return (
        f"allowed: sites {sites}; size small (T1/T2) or large (T3/T4); N0-N3; M0-M1; age {AGES[0]}-{AGES[1]}; "
        f"race {'/'.join(RACES)}; sex {'/'.join(SEXES)}; template: "
        + PROMPT_TEMPLATE.format(
            age=63,
            race="white",
            sex="male",
            site="liver",
            t=2,
            n=0,
            m=0,
            count=2,
            tumours="tumours",
            size="small",
        )
    )


@dataclass(frozen=True)
class PromptFields:
    """The labelled fields of one prompt.

    Attributes:
        age: years.
        race: one of :data:`RACES`.
        sex: one of :data:`SEXES`.
        site: one of :data:`SITES`.
        t: T stage 1-4.
        n: N stage 0-3.
        m: M stage 0-1.
        count: number of primary tumours (separate connected components).
        size: ``"small"`` or ``"large"``.
    """

    age: int
    race: str
    sex: str
    site: str
    t: int
    n: int
    m: int
    count: int
    size: str

    def __post_init__(self) -> None:
        problems = []
        if self.site not in SITES:
            problems.append(f"site {self.site!r} is not in the vocabulary")
        elif self.count not in COUNTS[self.site]:
            problems.append(f"count {self.count} is not allowed for {self.site}")
        if self.size not in SIZES:
            problems.append(f"size {self.size!r} is not small/large")
        elif self.t not in T_FOR_SIZE[self.size]:
            problems.append(f"T{self.t} contradicts a {self.size} tumour")
        if not 0 <= self.n <= 3:
            problems.append(f"N{self.n} is outside N0-N3")
        if self.m not in (0, 1):
            problems.append(f"M{self.m} is outside M0-M1")
        if not AGES[0] <= self.age <= AGES[1]:
            problems.append(f"age {self.age} is outside {AGES[0]}-{AGES[1]}")
        if self.race not in RACES:
            problems.append(f"race {self.race!r} is unknown")
        if self.sex not in SEXES:
            problems.append(f"sex {self.sex!r} is unknown")
        if problems:
            raise PromptError(f"bad prompt: {'; '.join(problems)}; {_allowed()}")

    @property
    def text(self) -> str:
        """The prompt in the authors' template."""
        return PROMPT_TEMPLATE.format(
            age=self.age,
            race=self.race,
            sex=self.sex,
            site=self.site,
            t=self.t,
            n=self.n,
            m=self.m,
            count=self.count,
            tumours="tumour" if self.count == 1 else "tumours",
            size=self.size,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptFields:
        return cls(
            **{k: d[k] for k in ("age", "race", "sex", "site", "t", "n", "m", "count", "size")}
        )


def parse_prompt(prompt: str) -> PromptFields:
    """Read the fields of a prompt written in the template.

    Raises:
        PromptError: one line naming what is wrong and listing what is allowed.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError(f"bad prompt: empty; {_allowed()}")
    m = _PATTERN.match(" ".join(prompt.split()))
    if m is None:
        raise PromptError(f"bad prompt: it does not follow the template; {_allowed()}")
    g = m.groupdict()
    return PromptFields(
        age=int(g["age"]),
        race=g["race"].lower(),
        sex=g["sex"].lower(),
        site=g["site"].lower().strip(),
        t=int(g["t"]),
        n=int(g["n"]),
        m=int(g["m"]),
        count=int(g["count"]),
        size=g["size"].lower(),
    )


def sample_fields(
    rng: np.random.Generator,
    *,
    site: str | None = None,
    count: int | None = None,
    size: str | None = None,
) -> PromptFields:
    """Draw prompt fields (the given ones fixed, the others uniform over the vocabulary)."""
    site = site if site is not None else str(rng.choice(list(SITES)))
    if site not in SITES:
        raise PromptError(f"bad prompt: site {site!r} is not in the vocabulary; {_allowed()}")
    count = count if count is not None else int(rng.choice(COUNTS[site]))
    size = size if size is not None else str(rng.choice(SIZES))
    t = int(rng.choice(T_FOR_SIZE[size])) if size in T_FOR_SIZE else 1
    return PromptFields(
        age=int(rng.integers(30, 86)),
        race=str(rng.choice(RACES)),
        sex=str(rng.choice(SEXES)),
        site=site,
        t=t,
        n=int(rng.integers(0, 4)),
        m=int(rng.integers(0, 2)),
        count=count,
        size=size,
    )


def cells() -> list[tuple[str, int, str]]:
    """Every (site, count, size) the demo vocabulary allows, in a fixed order."""
    return [(s, c, z) for s in SITES for c in COUNTS[s] for z in SIZES]


def prompt_bank(seed: int, per_cell: int) -> list[PromptFields]:
    """``per_cell`` prompts for every (site, count, size) cell, nuisance fields drawn.

    The training set pairs each label map with a prompt of its realised cell from this bank, so
    the text encoder runs once per bank prompt instead of once per case. Entry ``k`` belongs to
    cell ``k // per_cell`` of :func:`cells`.
    """
    rng = np.random.default_rng([seed, 7919])
    return [
        sample_fields(rng, site=s, count=c, size=z) for s, c, z in cells() for _ in range(per_cell)
    ]
