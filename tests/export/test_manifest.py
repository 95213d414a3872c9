"""Manifest validation: the runtime refuses a bad manifest with the field named."""

from __future__ import annotations

import json

import pytest

from runtime.errors import ManifestError
from runtime.manifest import Manifest


@pytest.fixture()
def copy(exported_copy):
    return exported_copy


def _edit(folder, change) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_exported_manifest_loads(exported_tiny) -> None:
    manifest = Manifest.load(exported_tiny[0])
    assert manifest["format_version"] == 1
    assert {"decoder", "vision", "embeddings", "tokenizer", "draft_step", "draft_memory", "draft_chain"} <= set(
        manifest["files"])
    assert manifest["parity"]["draft_chain"]["passed"]
    assert manifest["parity"]["decoder"]["passed"]
    report = manifest["parity"]["decoder"]["comparisons"][0][0]
    assert {"max_abs_diff", "mismatches", "elements"} <= set(report)


def test_wrong_format_version(copy) -> None:
    _edit(copy, lambda d: d.update(format_version=99))
    with pytest.raises(ManifestError, match="format_version"):
        Manifest.load(copy)


def test_missing_field_is_named(copy) -> None:
    _edit(copy, lambda d: d["limits"].pop("node_budget"))
    with pytest.raises(ManifestError, match="limits.node_budget"):
        Manifest.load(copy)


def test_sha_mismatch_is_named(copy) -> None:
    with open(copy / "embeddings.npy", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ManifestError, match=r"files\.embeddings\.sha256"):
        Manifest.load(copy)


def test_missing_file_is_named(copy) -> None:
    (copy / "vision.onnx").unlink()
    with pytest.raises(ManifestError, match=r"vision\.onnx"):
        Manifest.load(copy)


def test_io_names_checked_against_graph(copy) -> None:
    from runtime.ort_target import OrtTargetRunner

    _edit(copy, lambda d: d["io_contract"]["decoder"]["inputs"][0].update(name="embeds"))
    with pytest.raises(ManifestError, match=r"io_contract\.decoder\.inputs\[0\]\.name"):
        OrtTargetRunner(Manifest.load(copy))


def test_no_manifest(tmp_path) -> None:
    with pytest.raises(ManifestError, match="manifest.json"):
        Manifest.load(tmp_path)
