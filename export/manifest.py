"""Writes `manifest.json`: the one description of an artifact folder the runtime trusts.

Place in the data flow: the export steps (`export/pipeline.py`) collect graph contracts
(`export/contract.py`), specs and parity reports; `write_manifest` adds the format and package
versions, the git SHA, and the sha256 of every listed file, then writes the JSON. The runtime reads it
with `runtime.manifest.Manifest.load`, which refuses any disagreement with the field named.
"""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

from runtime.errors import ManifestError
from runtime.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, sha256_of


def package_version() -> str:
    """The installed dream-s-edge version ("unknown" when not installed)."""
    try:
        return metadata.version("dream-s-edge")
    except metadata.PackageNotFoundError:
        return "unknown"


def git_sha() -> str | None:
    """The source tree's commit, or None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def file_entries(folder: Path, files: dict[str, str]) -> dict[str, dict]:
    """{key: relative path} -> {key: {"path", "sha256", "bytes"}} for files inside `folder`."""
    entries = {}
    for key, rel in files.items():
        path = folder / rel
        entries[key] = {"path": rel, "sha256": sha256_of(path), "bytes": path.stat().st_size}
    return entries


def write_manifest(folder: Path, body: dict, files: dict[str, str]) -> Path:
    """Writes folder/manifest.json from `body` (target, limits, tree, processor, io_contract, ...)
    and `files` ({key: path relative to folder}); returns its path after loading it back once."""
    folder = Path(folder)
    data = {
        "format_version": FORMAT_VERSION,
        "package_version": package_version(),
        "git_sha": git_sha(),
        **body,
        "files": file_entries(folder, files),
    }
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    Manifest.load(folder)  # the runtime's own check, so export never leaves a folder it would refuse
    return path


def update_manifest(folder: Path, updates: dict[str, dict]) -> Path:
    """Sets fields inside sections of an existing folder's manifest.json (e.g. {"draft": {"calibration": ...}})
    and checks it loads again; the files and their sha256 are untouched.

    Raises:
        ManifestError: the folder's manifest is missing or invalid, or a section to update is missing.
    """
    folder = Path(folder)
    data = dict(Manifest.load(folder, verify_checksums=False).data)
    for section, fields in updates.items():
        if not isinstance(data.get(section), dict):
            raise ManifestError(f"The manifest has no {section!r} section to update.",
                                note=f"{folder / MANIFEST_NAME}", hint="re-export the folder")
        data[section] = {**data[section], **fields}
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    Manifest.load(folder, verify_checksums=False)
    return path
