"""The artifact manifest, as the runtime reads it: load, validate, refuse with the field named.

Place in the data flow: `dream-s-edge export` writes `DIR/manifest.json` beside the ONNX graphs, the
embedding table and the tokenizer (`export/manifest.py`); `Manifest.load(DIR)` checks it before any
session is built. Nothing is inferred from file names: every file is listed under `files` with its
sha256, and every graph's inputs and outputs under `io_contract` (written by `export/contract.py`).

Checks, each raising `ManifestError` naming the field: the file is there and is JSON; the format
version is the one this runtime reads; every required field is present; every listed file exists
and matches its sha256. Graph I/O against the sessions is checked by the runners
(`check_session_io`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ManifestError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
REQUIRED = (
    "format_version",
    "package_version",
    "target",
    "limits",
    "feature_layers",
    "tree",
    "vocab",
    "processor",
    "files",
    "io_contract",
)
TARGET_FIELDS = ("num_layers", "hidden_size", "num_kv_heads", "head_dim", "vocab_size", "eos_token_ids")
LIMIT_FIELDS = ("max_context", "node_budget")


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A validated manifest and the folder it describes.

    Attributes:
        folder: the artifact folder.
        data: the parsed manifest.json.
    """

    folder: Path
    data: dict

    @classmethod
    def load(cls, folder: str | Path, verify_checksums: bool = True) -> Manifest:
        """Reads and validates `folder/manifest.json`.

        Raises:
            ManifestError: a missing or malformed manifest, another format version, a missing
                field, a missing file or a sha256 mismatch (each named).
        """
        folder = Path(folder)
        data = _read(folder / MANIFEST_NAME)
        _check_fields(data)
        manifest = cls(folder, data)
        for key in data["files"]:
            manifest.path(key, verify=verify_checksums)
        return manifest

    def __getitem__(self, key: str):
        return self.data[key]

    def has(self, key: str) -> bool:
        """Whether `files` lists `key` (e.g. "draft_step")."""
        return key in self.data["files"]

    def path(self, key: str, verify: bool = False) -> Path:
        """The path of file `key`; with `verify`, checks it exists and matches its sha256.

        Raises:
            ManifestError: `files.<key>` is not listed, the file is missing, or its sha256 differs.
        """
        entry = self.data["files"].get(key)
        if not isinstance(entry, dict) or "path" not in entry or "sha256" not in entry:
            raise ManifestError(f"The manifest lists no file 'files.{key}' (with path and sha256).",
                                note=f"listed: {sorted(self.data['files'])}")
        path = self.folder / entry["path"]
        if verify:
            if not path.is_file():
                raise ManifestError(f"Missing artifact file {path} (files.{key}).",
                                    hint="re-run `dream-s-edge export` into this folder")
            actual = sha256_of(path)
            if actual != entry["sha256"]:
                raise ManifestError(
                    f"Artifact file {path} does not match its sha256 (files.{key}.sha256).",
                    note=f"manifest {entry['sha256'][:16]}..., file {actual[:16]}...",
                    hint="the file was changed after export; re-export",
                )
        return path

    def contract(self, graph: str) -> dict:
        """The `io_contract` entry of a graph ({"inputs": [...], "outputs": [...]}).

        Raises:
            ManifestError: the graph has no entry.
        """
        entry = self.data["io_contract"].get(graph)
        if entry is None:
            raise ManifestError(f"The manifest has no io_contract.{graph}.",
                                note=f"graphs: {sorted(self.data['io_contract'])}")
        return entry


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ManifestError(f"No {MANIFEST_NAME} in {path.parent}.",
                            hint="point at a folder written by `dream-s-edge export --out DIR`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path} is not valid JSON.", note=str(error)) from error
    if not isinstance(data, dict):
        raise ManifestError(f"{path} does not hold a JSON object.")
    return data


def _check_fields(data: dict) -> None:
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            "Unsupported manifest format_version.",
            note=f"format_version {version!r}, this runtime reads {FORMAT_VERSION}",
            hint="re-export with the installed dream-s-edge, or install the version that wrote it",
        )
    for key in REQUIRED:
        if key not in data:
            raise ManifestError(f"The manifest misses the field '{key}'.", hint="re-export the artifacts")
    for section, fields in (("target", TARGET_FIELDS), ("limits", LIMIT_FIELDS)):
        for key in fields:
            if key not in data[section]:
                raise ManifestError(f"The manifest misses the field '{section}.{key}'.")


def check_session_io(graph: str, contract: dict, session) -> None:
    """Checks an onnxruntime session's inputs and outputs against the manifest's contract.

    Compares names, order, element types and ranks (fixed axes by value).

    Raises:
        ManifestError: naming the first field that differs, e.g. `io_contract.decoder.inputs[3].name`.
    """
    for side, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        expected = contract[side]
        if len(expected) != len(actual):
            raise ManifestError(
                f"io_contract.{graph}.{side}: the graph has another number of {side}.",
                note=f"manifest {len(expected)}, graph {len(actual)}",
            )
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            _check_tensor(f"io_contract.{graph}.{side}[{i}]", want, got)


_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "float16": "tensor(float16)"}


def _check_tensor(field: str, want: dict, got) -> None:
    if want["name"] != got.name:
        raise ManifestError(f"{field}.name differs from the graph.", note=f"manifest {want['name']!r}, graph {got.name!r}")
    if _ORT_TYPES.get(want["dtype"]) != got.type:
        raise ManifestError(f"{field}.dtype differs from the graph.", note=f"manifest {want['dtype']}, graph {got.type}")
    shape = want["shape"]
    if len(shape) != len(got.shape):
        raise ManifestError(f"{field}.shape has another rank than the graph.", note=f"manifest {shape}, graph {got.shape}")
    for axis, (a, b) in enumerate(zip(shape, got.shape, strict=True)):
        if isinstance(a, int) and isinstance(b, int) and a != b:
            raise ManifestError(f"{field}.shape[{axis}] differs from the graph.", note=f"manifest {shape}, graph {got.shape}")
