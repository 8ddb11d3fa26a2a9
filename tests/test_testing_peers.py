"""The peer-difference table of docs/semantics.md is the kit's output on the installed peers.

``python -m triplet_ref.testing.peers`` printed the table between the ``peers-table``
markers of ``docs/semantics.md``; this test runs the kit on the same peer configurations
(pytorch-metric-learning, sentence-transformers) and checks that, row by row, the variants
it finds are exactly the documented ones.  The default run checks float64 values only
(a few seconds); ``--runslow`` checks float32 too, and the gradients.
"""
from __future__ import annotations

import os
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")
pytest.importorskip("sentence_transformers")

from triplet_ref.testing import peers  # noqa: E402

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "semantics.md")


def _documented() -> dict:
    text = open(DOC, encoding="utf-8").read()
    m = re.search(r"<!-- peers-table:begin -->(.*?)<!-- peers-table:end -->", text, re.S)
    assert m, "docs/semantics.md has no peers-table markers"
    rows = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("peer configuration", "---"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def _check(results):
    doc = _documented()
    table = peers.table(results)
    assert {p.name for p, _ in results} == set(doc), table
    for p, rep in results:
        loss, variants = doc[p.name]
        assert loss == p.loss + (" (soft)" if p.soft else ""), p.name
        found = "; ".join(rep.variants) if rep.variants else ("none: conforms" if rep.ok else "?")
        assert found == variants, f"{p.name}: the kit now finds {found!r}, the doc says {variants!r}\n{rep}"
        assert not rep.ambiguous, str(rep)


def test_documented_peer_rows_are_what_the_kit_finds():
    _check(peers.run(quick=True))


@pytest.mark.slow
def test_documented_peer_rows_with_float32_and_gradients():
    _check(peers.run(quick=False))


def test_the_table_markdown_is_the_documented_one():
    # the doc's rows are the printed table, cell for cell (names and loss columns)
    rows = _documented()
    assert [p.name for p in peers.PEERS] == list(rows)
