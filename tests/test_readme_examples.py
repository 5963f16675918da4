"""README's python blocks do what the README says they do.

Each block runs in a fresh interpreter. A block followed by a ``text`` block (the
README's "It prints:") must print exactly that (port numbers aside: port 0 picks a
new one on every run); a block that prints nothing must check its own claims with
``assert``. The blocks that are ``client/examples`` files verbatim are run, with
their output checked, by tests/test_examples.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```\n", re.S)
#: The paragraph after a block, then a text block: what the block prints.
STATED = re.compile(r"\n(?:[^\n]+\n)+\n```text\n(.*?)```", re.S)
TIMEOUT = 60.0


def readme_blocks() -> list[tuple[int, str, str | None]]:
    """(line, code, stated output or None) of every python block but the example files."""
    text = (ROOT / "README.md").read_text()
    examples = [path.read_text() for path in (ROOT / "client" / "examples").glob("*.py")]
    found = []
    for match in BLOCK.finditer(text):
        if match.group(1) in examples:
            continue
        stated = STATED.match(text, match.end())
        line = text[: match.start()].count("\n") + 1
        found.append((line, match.group(1), stated.group(1) if stated else None))
    return found


def without_ports(output: str) -> str:
    return re.sub(r"(', )\d+\)", r"\1PORT)", output)


def test_the_readme_has_blocks_to_check() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 4
    assert sum(output is not None for _, _, output in blocks) >= 3


@pytest.mark.parametrize(
    ("line", "code", "stated"), readme_blocks(), ids=[f"line-{b[0]}" for b in readme_blocks()]
)
def test_a_readme_block_does_what_the_readme_says(line: int, code: str, stated: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"README.md line {line}:\n{done.stderr[-3000:]}"
    if stated is None:
        assert "print(" not in code, f"README.md line {line} prints, but says not what"
        assert "assert " in code, f"README.md line {line} neither prints nor asserts"
    else:
        assert without_ports(done.stdout) == without_ports(stated), f"README.md line {line}"
