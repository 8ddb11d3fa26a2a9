"""docs/migrating.md: every Python block runs and prints exactly the output shown under it; a
`peer` line and the `triplet_ref` line after it print the same number, unless the peer line is
marked `(differs)` (then the numbers must differ). Blocks of one section share a namespace.
The `python keras` blocks run in the Keras interpreter of tests/test_keras.py."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "migrating.md"
BLOCK = re.compile(r"```python( keras)?\n(.*?)```\n(?:\s*```text\n(.*?)```)?", re.S)


def sections(path: Path = DOC) -> dict[str, list[tuple[bool, str, str | None]]]:
    """``{section title: [(is_keras, code, expected output or None), ...]}``."""
    out: dict = {}
    for part in re.split(r"^## ", path.read_text(encoding="utf-8"), flags=re.M)[1:]:
        title = part.splitlines()[0].strip()
        out[title] = [(bool(k), code, text) for k, code, text in BLOCK.findall(part)]
    return out


def run_blocks(blocks, namespace=None) -> list[str]:
    ns = {} if namespace is None else namespace
    outputs = []
    for code in blocks:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(code, str(DOC), "exec"), ns)
        outputs.append(buf.getvalue())
    return outputs


def check_pairs(output: str) -> int:
    """Each ``peer`` line against the ``triplet_ref`` line after it; returns the pairs checked."""
    lines = output.splitlines()
    pairs = 0
    for i, line in enumerate(lines):
        if not line.startswith("peer"):
            continue
        assert i + 1 < len(lines) and lines[i + 1].startswith("triplet_ref"), line
        peer = float(re.findall(r"-?\d+\.\d+", line)[-1])
        ours = float(re.findall(r"-?\d+\.\d+", lines[i + 1])[-1])
        if "(differs)" in line:
            assert peer != ours, (line, lines[i + 1])
        else:
            assert peer == ours, (line, lines[i + 1])
        pairs += 1
    return pairs


NEEDS = {"From pytorch-metric-learning": ("torch", "pytorch_metric_learning"),
         "From sentence-transformers": ("torch", "sentence_transformers"),
         "From TF-Addons / Keras": ("torch", "sentence_transformers"),
         "From the omoindrot code": ("torch", "sentence_transformers")}


def test_every_section_is_tested():
    assert set(sections()) == set(NEEDS)
    assert all(any(not k for k, _, _ in blocks) for blocks in sections().values())


@pytest.mark.parametrize("title", list(NEEDS))
def test_section_runs_and_prints_what_the_guide_shows(title):
    for mod in NEEDS[title]:
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    blocks = [(code, text) for keras, code, text in sections()[title] if not keras]
    outputs = run_blocks([code for code, _ in blocks])
    pairs = 0
    for (code, expected), got in zip(blocks, outputs):
        assert expected is not None or got == "", f"a block prints but the guide shows no output:\n{code}"
        if expected is not None:
            assert got == expected, f"\n--- printed ---\n{got}--- the guide shows ---\n{expected}"
            pairs += check_pairs(got)
    assert pairs >= 1
