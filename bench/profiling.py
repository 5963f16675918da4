"""Where a benchmark loop spends its time: flat per-function shares from a profiler.

Uses pyinstrument when it is installed (it is not a dependency), else the standard
library's cProfile. Both add a cost to every Python call, so the shares lean towards
functions called once per message; the unprofiled per-phase split a scenario measures is
the figure to trust, the profile says which function inside a phase to look at.
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
    # (function, location) -> [self seconds, total seconds]
    times: dict[tuple[str, str], list[float]] = {}
    try:
        pyinstrument = importlib.import_module("pyinstrument")
    except ImportError:
        profiler = cProfile.Profile()
        profiler.runcall(target)
        stats = pstats.Stats(profiler).get_stats_profile()
        for name, entry in stats.func_profiles.items():
            where = f"{display_path(entry.file_name)}:{entry.line_number}"
            times[name, where] = [entry.tottime, entry.cumtime]
        tool, total = "cProfile", stats.total_tt or 1.0
    else:
        sampler = pyinstrument.Profiler(interval=0.0001)
        sampler.start()
        target()
        root = sampler.stop().root_frame()
        for frame, outer in _frames(root, frozenset()):
            key = _key(frame)
            seconds = times.setdefault(key, [0.0, 0.0])
            seconds[0] += float(frame.total_self_time)
            if key not in outer:  # a recursive call is already inside its caller's total
                seconds[1] += float(frame.time)
        tool = f"pyinstrument {getattr(pyinstrument, '__version__', '')}".strip()
        total = float(root.time) or 1.0
    ranked = sorted(times.items(), key=lambda item: item[1][0], reverse=True)[:top]
    hotspots = [Hotspot(name, where, s / total, t / total) for (name, where), (s, t) in ranked]
    return Profile(tool, total, hotspots)


def _frames(
    frame: Any, outer: frozenset[tuple[str, str]]
) -> Iterator[tuple[Any, frozenset[tuple[str, str]]]]:
    yield frame, outer
    for child in frame.children:
        if not child.is_synthetic:  # "[self]" pseudo-frames: already in total_self_time
            yield from _frames(child, outer | {_key(frame)})


def _key(frame: Any) -> tuple[str, str]:
    """A pyinstrument frame's ``Class.function`` and ``path:line``."""
    name = f"{frame.class_name}.{frame.function}" if frame.class_name else str(frame.function)
    location = display_path(str(frame.file_path or ""))
    return name, f"{location}:{frame.line_no}" if frame.line_no else location
