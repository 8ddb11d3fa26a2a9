"""benchmarks/scaling.py runs end to end on a tiny batch (the targets' verdict lines; the
chunked and unchunked values are compared inside it, an AssertionError fails the run)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_scaling_benchmark_prints_the_targets():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--scaling", "--parts", "ratio", "--b", "96",
         "--chunk", "32", "--reps", "1", "--frameworks", "numpy", "--losses", "all,semi"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| numpy |")]
    assert [r.split("|")[2].strip() for r in rows] == ["batch_all", "batch_semihard"], out.stdout
    verdict = [line for line in out.stdout.splitlines() if "costs <= 1.2x the unchunked time at B=96" in line]
    assert len(verdict) == 1 and ("**met**" in verdict[0] or "**not met**" in verdict[0]), out.stdout
