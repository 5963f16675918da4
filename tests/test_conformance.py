"""Every MUST of protocol.md has an id, and tests/conformance.md names existing tests for
every id: a rule without a test shows up here as a failure."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "protocol.md"
TABLE = Path(__file__).resolve().parent / "conformance.md"

ID = re.compile(r"\[(M-[0-9.]+-[0-9]+)\]")
#: Where a MUST's id may no longer come: a blank line or the start of another list item.
BREAK = re.compile(r"\n\s*\n|\n\s*(?:[-*]|\d+\.)\s")


def spec_ids() -> list[str]:
    return ID.findall(SPEC.read_text())


def table_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in TABLE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("M-"):
            assert cells[0] not in rows, f"{cells[0]} listed twice in tests/conformance.md"
            rows[cells[0]] = re.findall(r"`([^`]+::[^`]+)`", cells[3])
    return rows


def test_every_must_in_the_spec_carries_an_id() -> None:
    text = SPEC.read_text()
    header_end = text.index("## 1. Framing")  # the RFC 2119 sentence names the words
    untagged = []
    for match in re.finditer(r"\bMUST\b", text[header_end:]):
        start = header_end + match.end()
        rest = text[start:]
        tag = ID.search(rest)
        stop = BREAK.search(rest)
        if tag is None or (stop is not None and stop.start() < tag.start()):
            line = text.count("\n", 0, start) + 1
            untagged.append(f"protocol.md:{line}")
    assert not untagged, f"MUSTs without an [M-…] id after them: {untagged}"


def test_spec_ids_are_unique_and_each_in_its_own_section() -> None:
    ids = spec_ids()
    assert len(ids) == len(set(ids)), "an id appears twice in protocol.md"
    text = SPEC.read_text()
    sections = re.split(r"\n(?=## \d+\.)", text)
    for section in sections:
        number = re.match(r"## (\d+)\.", section)
        for found in ID.findall(section):
            assert number is not None and found.split("-")[1].split(".")[0] == number.group(1)


def test_the_table_lists_exactly_the_ids_of_the_spec() -> None:
    rows = table_rows()
    assert sorted(rows) == sorted(spec_ids())
    empty = [found for found, tests in rows.items() if not tests]
    assert not empty, f"ids without a test: {empty}"


def test_every_test_named_in_the_table_exists() -> None:
    missing = []
    defined: dict[Path, set[str]] = {}
    for tests in table_rows().values():
        for node in tests:
            path, _, name = node.partition("::")
            file = ROOT / path
            if not file.is_file():
                missing.append(node)
                continue
            if file not in defined:
                tree = ast.parse(file.read_text())
                names: set[str] = set()
                for item in tree.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        names.add(item.name)
                    elif isinstance(item, ast.Assign):
                        names.update(t.id for t in item.targets if isinstance(t, ast.Name))
                defined[file] = names
            wanted = name.split("[")[0]
            if not wanted.startswith(("test_", "Test")) or wanted not in defined[file]:
                missing.append(node)
    assert not missing, f"tests named in tests/conformance.md that do not exist: {missing}"
