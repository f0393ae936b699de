"""docs/library.md's example ("use as a library": plain Trainer, own data, own callback) runs as written."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def test_the_library_example_runs_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/library.md should hold exactly one python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    monkeypatch.chdir(tmp_path)  # the example writes runs/library/ relative to where it runs
    namespace = runpy.run_path(str(script), run_name="__main__")
    assert namespace["stage_log"].epochs == [(0, 0, "impression"), (1, 0, "impression"), (2, 1, "impression"),
                                             (3, 1, "impression"), (4, 2, "combination"), (5, 2, "combination")]
    summary = json.loads((tmp_path / "runs" / "library" / "retention.json").read_text())
    assert [t["kind"] for t in summary["tasks"]] == ["impression", "impression", "combination"]
    assert summary["accuracy_matrix"][-1] == namespace["retention"].matrix[-1]
    assert summary["accuracy_matrix"][-1][2] > 0.3  # learned something (chance is 0.1)
    out = capsys.readouterr().out
    assert "impress-lightning: 3 of 3 task(s) learned" in out  # the closing table reached the screen
