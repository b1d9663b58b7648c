"""Inference engines a run can be exported to and served from, behind the same `Predictor`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "export.json"
"""What an export folder is: its format, quantization and source run."""


def write_manifest(folder: Path, format: str, source: Path, quantize: str | None, **details: Any) -> dict[str, Any]:
    manifest = {"format": format, "quantize": quantize, "source": str(source), **details}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_format(folder: Path) -> str | None:
    """The format of the export in `folder`, or None for anything else (a run's `model/`, a plain model)."""
    manifest = folder / MANIFEST
    return json.loads(manifest.read_text())["format"] if manifest.is_file() else None
