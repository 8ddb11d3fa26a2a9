"""Every ``python`` snippet of docs/scaling.md runs (each in a fresh namespace) and its own
assertions hold (they compare with the oracles or with the single-process loss)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
NEEDS = {"jax": "jax", "torch": "torch"}


def test_the_page_has_its_snippets():
    assert len(SNIPPETS) == 6


@pytest.mark.parametrize("i", range(len(SNIPPETS)))
def test_snippet_runs(i):
    code = SNIPPETS[i]
    for mod in NEEDS:
        if re.search(rf"^import {mod}\b", code, re.M):
            pytest.importorskip(mod)
    exec(compile(code, f"{DOC.name}[snippet {i}]", "exec"), {"__name__": f"scaling_doc_{i}"})
