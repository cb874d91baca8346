"""The Python walk-through in docs/python-api.md runs as written (so it cannot rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def code_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_walkthrough_blocks_are_valid_python():
    blocks = code_blocks(DOC)
    assert len(blocks) >= 8
    for i, block in enumerate(blocks):
        compile(block, f"{DOC.name} block {i + 1}", "exec")


@pytest.mark.slow
def test_walkthrough_runs_as_written(tmp_path):
    """All blocks in order in one interpreter, as a notebook would, in an empty folder."""
    script = "\n\n".join(f"# --- block {i + 1}\n{block}" for i, block in enumerate(code_blocks(DOC)))
    (tmp_path / "walkthrough.py").write_text(script)
    result = subprocess.run([sys.executable, "walkthrough.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "demo" / "runs" / "blend" / "report.html").is_file()
    assert (tmp_path / "demo" / "predictions.csv").is_file()
    assert "unknown key 'num_boost_rounds'" in result.stdout  # the error example printed its message


def test_architecture_names_exist():
    """Every ``module.name`` docs/architecture.md cites (``runs.read_config``, ``train/model.check_backbone``) exists."""
    import importlib
    import importlib.util

    text = (DOC.parent / "architecture.md").read_text()
    cited = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)?)\.([A-Za-z_]+)", text))
    checked = 0
    for module, name in sorted(cited):
        if name in {"parquet", "json", "yaml", "csv", "html", "png", "md", "py", "npy"}:
            continue  # a file name
        if module == "melanet":  # `melanet.io`: a module
            importlib.import_module(f"melanet.{name}")
            continue
        path = f"melanet.{module.replace('/', '.')}"
        if importlib.util.find_spec(path) is None:
            continue  # a config key (`model.backbone`), not a module
        mod = importlib.import_module(path)
        assert hasattr(mod, name), f"docs/architecture.md cites {module}.{name}, which does not exist"
        checked += 1
    assert checked >= 15
