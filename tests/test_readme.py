"""The README's Python example runs as written, from any folder."""

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)  # not the checkout: the shipped model is found beside the package
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    frame, stats, out = scope["frame"], scope["stats"], scope["out"]
    assert frame.shape == (72, 72, 3) and frame.dtype == np.uint8
    assert stats.passes == 4 and stats.total_ms > 0
    assert set(out) == {scope["session"], scope["other"]}
    assert all(f.shape == (72, 72, 3) for f, _ in out.values())
