"""Where a benchmark loop spends its time: flat per-function shares from a profiler.

Uses pyinstrument when it is installed (it is not a dependency), else the
standard library's cProfile. Both add a cost to every Python call, so the shares
lean towards functions called once per message; the unprofiled per-phase split a
scenario measures is the figure to trust, the profile says which function inside a
phase to look at.
"""

from __future__ import annotations

import cProfile
import importlib
import pstats
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .results import display_path


@dataclass(frozen=True, slots=True)
class Hotspot:
    """One function's share of the profiled time."""

    function: str
    location: str
    self_share: float  # time in the function itself (builtins it calls count apart)
    total_share: float  # time in the function and everything it calls


@dataclass(frozen=True, slots=True)
class Profile:
    """A flat profile: the tool used, the seconds it saw, the top functions by self time."""

    tool: str
    seconds: float
    hotspots: list[Hotspot]


def profile(target: Callable[[], object], top: int = 15) -> Profile:
    """Run *target* once under a profiler and return its *top* functions by self time."""
    try:
        pyinstrument = importlib.import_module("pyinstrument")
    except ImportError:
        return _with_cprofile(target, top)
    return _with_pyinstrument(pyinstrument, target, top)


def _with_pyinstrument(pyinstrument: Any, target: Callable[[], object], top: int) -> Profile:
    profiler = pyinstrument.Profiler(interval=0.0001)
    profiler.start()
    target()
    session = profiler.stop()
    root = session.root_frame()
    total = float(root.time) or 1.0
    self_time: dict[tuple[str, str], float] = {}
    total_time: dict[tuple[str, str], float] = {}
    for frame, outer in _frames(root, frozenset()):
        key = _pyinstrument_key(frame)
        self_time[key] = self_time.get(key, 0.0) + float(frame.total_self_time)
        if key not in outer:  # a recursive call is already inside its caller's total
            total_time[key] = total_time.get(key, 0.0) + float(frame.time)
    ranked = sorted(self_time.items(), key=lambda item: item[1], reverse=True)[:top]
    hotspots = [
        Hotspot(name, location, seconds / total, total_time.get((name, location), 0.0) / total)
        for (name, location), seconds in ranked
    ]
    version = getattr(pyinstrument, "__version__", "")
    return Profile(f"pyinstrument {version}".strip(), total, hotspots)


def _frames(
    frame: Any, outer: frozenset[tuple[str, str]]
) -> Iterator[tuple[Any, frozenset[tuple[str, str]]]]:
    yield frame, outer
    inner = outer | {_pyinstrument_key(frame)}
    for child in frame.children:
        if not child.is_synthetic:  # "[self]" pseudo-frames: already in total_self_time
            yield from _frames(child, inner)


def _pyinstrument_key(frame: Any) -> tuple[str, str]:
    name = str(frame.function)
    if frame.class_name:
        name = f"{frame.class_name}.{name}"
    line = frame.line_no
    location = display_path(str(frame.file_path or ""))
    if line:
        location = f"{location}:{line}"
    return name, location


def _with_cprofile(target: Callable[[], object], top: int) -> Profile:
    profiler = cProfile.Profile()
    profiler.runcall(target)
    stats = pstats.Stats(profiler).get_stats_profile()
    total = stats.total_tt or 1.0
    ranked = sorted(stats.func_profiles.items(), key=lambda item: item[1].tottime, reverse=True)
    hotspots = [
        Hotspot(
            name,
            f"{display_path(entry.file_name)}:{entry.line_number}",
            entry.tottime / total,
            entry.cumtime / total,
        )
        for name, entry in ranked[:top]
    ]
    return Profile("cProfile", total, hotspots)
