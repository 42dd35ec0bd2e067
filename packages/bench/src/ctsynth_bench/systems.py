"""The registry of full systems that the ``bench`` CLI offers.

A :class:`System` names a system, says in one line what it does, and points at the module that
implements it; the module is imported only when the system is used (:meth:`System.load`), so
``bench --help`` stays fast and a system's heavy dependencies load only for that system. The CLI
reads :data:`SYSTEMS` (``bench systems``) and looks names up with :func:`get_system`.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from types import ModuleType

from .exceptions import RegistryError

__all__ = ["SYSTEMS", "System", "get_system", "register_system"]


@dataclass(frozen=True)
class System:
    """One full system.

    Attributes:
        name: the name users type (``bench ... <name>``); lower case, no spaces.
        description: one line: what it makes from what.
        module: dotted path of the module implementing it, imported lazily by :meth:`load`.
    """

    name: str
    description: str
    module: str

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or not self.name.isidentifier():
            raise RegistryError(
                f"system name {self.name!r} must be a non-empty lower-case identifier "
                "(e.g. 'guidegen')"
            )
        if not self.module or any(not part.isidentifier() for part in self.module.split(".")):
            raise RegistryError(
                f"system {self.name!r}: module {self.module!r} is not a dotted module path"
            )

    def load(self) -> ModuleType:
        """Import and return the system's module."""
        return importlib.import_module(self.module)


#: Registered systems by name, in the order ``bench systems`` lists them.
SYSTEMS: dict[str, System] = {}


def register_system(system: System) -> System:
    """Add ``system`` to :data:`SYSTEMS` and return it.

    Raises:
        RegistryError: a different system with the same name is already registered.
    """
    old = SYSTEMS.get(system.name)
    if old is not None and old != system:
        raise RegistryError(
            f"a different system named {system.name!r} is already registered: {old}"
        )
    SYSTEMS[system.name] = system
    return system


def get_system(name: str) -> System:
    """The registered system called ``name``.

    Raises:
        RegistryError: no such system; the message lists the known ones and the closest name.
    """
    try:
        return SYSTEMS[name]
    except KeyError:
        pass
    known = list(SYSTEMS)
    close = difflib.get_close_matches(str(name).lower(), known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise RegistryError(f"unknown system {name!r}; known systems: {known or 'none'}{hint}")


register_system(
    System(
        name="lesiondiffusion",
        description="LesionDiffusion (MICCAI 2025): structured report -> lesion mask and CT "
        "inpainted into a real scan",
        module="ctsynth_bench.lesiondiffusion",
    )
)
register_system(
    System(
        name="guidegen",
        description="GuideGen (AAAI 2026): clinical prompt -> anatomy label map -> whole CT "
        "(in progress)",
        module="ctsynth_bench.guidegen",
    )
)
