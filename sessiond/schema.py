"""What each setting may hold: its range or choices, a one-line doc, and whether SIGHUP applies it.

Every field of a settings dataclass is declared with :func:`setting`, which
stores a :class:`Spec` in the field's metadata::

    @dataclass(frozen=True, slots=True)
    class StoreSection:
        timeout: float = setting(2.0, doc="seconds a store command may take", above=0, high=60,
                                 unit="s")

:mod:`sessiond.config` checks every value against its spec when the settings
are loaded (file, environment, flags), and ``sessiond config reference``
prints the reference (CONFIG.md) from the same specs. Sections whose
dataclass must stay free of this module (the client package's ``Params``) have
their specs in a table in :mod:`sessiond.config` instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Extra check of one value (each item, for a list): raises ``ValueError(reason)``.
Check = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class Spec:
    """The allowed values of one setting, and what it is for."""

    doc: str
    low: float | None = None  # inclusive, or exclusive with above=True
    high: float | None = None  # inclusive
    above: bool = False
    choices: tuple[str, ...] | None = None
    fold: bool = False  # choices compared without case, stored as spelled in choices
    min_items: int = 0  # lists
    unit: str = ""  # "s", "bytes", ... (for the reference and error messages)
    reload: bool = False  # SIGHUP applies a new value to the running daemon
    check: Check | None = None
    check_doc: str = ""  # what check accepts, in words (for the reference)

    def allowed(self) -> str:
        """The allowed values, in words: ``1 to 100000``, ``more than 0 s``, ``text or json``."""
        unit = f" {self.unit}" if self.unit else ""
        parts = []
        if self.choices is not None:
            parts.append(" | ".join(self.choices))
        if self.low is not None and self.high is not None and not self.above:
            parts.append(f"{_num(self.low)} to {_num(self.high)}{unit}")
        else:
            if self.low is not None:
                word = "more than" if self.above else "at least"
                parts.append(f"{word} {_num(self.low)}{unit}")
            if self.high is not None:
                parts.append(f"at most {_num(self.high)}{unit}")
        if self.min_items:
            parts.append(f"at least {self.min_items} item{'s' if self.min_items > 1 else ''}")
        if self.check_doc:
            parts.append(self.check_doc)
        return ", ".join(parts) or "any"

    def normalize(self, value: Any) -> Any:
        """*value* as stored (folded choices take their canonical spelling)."""
        if self.fold and self.choices is not None and isinstance(value, str):
            for choice in self.choices:
                if choice.lower() == value.lower():
                    return choice
        return value

    def problem(self, value: Any) -> str | None:
        """Why *value* (already of the right type) is not allowed, or None."""
        if self.choices is not None and value not in self.choices:
            return f"expected {self.allowed()}"
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isnan(value):  # NaN passes every comparison below
                return f"allowed: {self.allowed()}"
            too_low = self.low is not None and (
                value <= self.low if self.above else value < self.low
            )
            too_high = self.high is not None and value > self.high
            if too_low or too_high:
                return f"allowed: {self.allowed()}"
        if isinstance(value, tuple):
            if len(value) < self.min_items:
                return f"allowed: {self.allowed()}"
            items: Sequence[Any] = value
        else:
            items = (value,)
        if self.check is not None:
            for item in items:
                try:
                    self.check(item)
                except ValueError as exc:
                    return str(exc)
        return None


def setting(
    default: Any,
    *,
    doc: str,
    low: float | None = None,
    high: float | None = None,
    above: bool = False,
    choices: Sequence[str] | None = None,
    fold: bool = False,
    min_items: int = 0,
    unit: str = "",
    reload: bool = False,
    check: Check | None = None,
    check_doc: str = "",
) -> Any:
    """A dataclass field with *default* and its :class:`Spec` (see the module docstring).

    *low*/*high* bound numbers (inclusive; *above* makes *low* exclusive), *choices*
    lists the allowed strings, *min_items* bounds lists, *reload* says SIGHUP applies
    the setting live, *check* vets each value (or list item) and raises ValueError.
    """
    spec = Spec(
        doc,
        low,
        high,
        above,
        tuple(choices) if choices is not None else None,
        fold,
        min_items,
        unit,
        reload,
        check,
        check_doc,
    )
    return field(default=default, metadata={"spec": spec})


def spec_of(f: dataclasses.Field[Any]) -> Spec | None:
    """The spec :func:`setting` attached to a field, if any."""
    spec = f.metadata.get("spec")
    return spec if isinstance(spec, Spec) else None


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def check_fields(instance: Any, section: str) -> None:
    """Check every field of a settings dataclass against its spec (for embedders, who
    build the dataclass directly); ``ValueError`` names the first bad one."""
    for f in dataclasses.fields(instance):
        spec = spec_of(f)
        if spec is None:
            continue
        value = getattr(instance, f.name)
        problem = spec.problem(value)
        if problem is not None:
            raise ValueError(f"{section}.{f.name} = {value!r}: {problem}")
