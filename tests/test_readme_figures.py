"""README's guarantees table: every figure is produced by a command named beside it.

Each row's last cell names at least one command in backticks, ``[VAR=value ...]
python -m pytest ...``, ``python -m tests.fuzz ...`` or ``python -m bench.NAME ...``;
this checks that what the commands name exists: the test files, a test matching every
word of ``-k``, the environment variables the test files read, the options of
``tests/fuzz.py`` and the benchmark modules.
It does not run them (they take minutes); their figures are re-measured by hand when
the code they describe changes.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## What sessiond guarantees and how we test it"
KEYWORDS = {"and", "or", "not"}


def table_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return rows[1:]  # after the header


def commands(cell: str) -> list[str]:
    return [
        code
        for code in re.findall(r"`([^`]+)`", cell)
        if re.match(r"^([A-Z_]+=\S+ )*python -m (pytest|tests\.fuzz|bench\.\w+)\b", code)
    ]


def check_pytest(words: list[str], env: list[str], command: str) -> None:
    files = [ROOT / word for word in words if word.startswith("tests/")]
    assert files, f"names no test file: {command}"
    for path in files:
        assert path.is_file(), f"no such file {path}: {command}"
    sources = "\n".join(path.read_text() for path in files)
    names = re.findall(r"^(?:async )?def (test_\w+)", sources, re.MULTILINE)
    if "-k" in words:
        expression = words[words.index("-k") + 1]
        for term in re.findall(r"\w+", expression):
            if term not in KEYWORDS:
                assert any(term in name for name in names), f"no test matches {term!r}: {command}"
    for option in (word for word in words if word.startswith("--hypothesis")):
        assert option == "--hypothesis-show-statistics", command
    for name in env:
        if name != "CI":  # hypothesis's CI profile: tests/conftest.py
            assert f'"{name}"' in sources, f"{name} is not read by {files}: {command}"


def check_fuzz(words: list[str], command: str) -> None:
    source = (ROOT / "tests" / "fuzz.py").read_text()
    for option in (word for word in words if word.startswith("--")):
        assert f'"{option}"' in source, f"tests/fuzz.py has no {option}: {command}"


def test_every_guarantee_names_commands_that_exist() -> None:
    rows = table_rows()
    assert len(rows) >= 10
    for row in rows:
        found = commands(row[-1])
        assert found, f"no command for the figures of {row[0]!r}"
        for command in found:
            words = shlex.split(command)
            env = [word.split("=")[0] for word in words if re.match(r"^[A-Z_]+=", word)]
            words = words[len(env) :]
            if words[2] == "pytest":
                check_pytest(words, env, command)
            elif words[2] == "tests.fuzz":
                check_fuzz(words, command)
            else:
                module = ROOT / (words[2].replace(".", "/") + ".py")
                assert module.is_file(), f"no module {module}: {command}"
    assert 'os.environ.get("CI")' in (ROOT / "tests" / "conftest.py").read_text()
