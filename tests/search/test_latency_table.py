"""The latency table format: validation names the field, merge keeps one entry per key."""

from __future__ import annotations

import json

import pytest

from search.latency_table import (
    LatencyTableError,
    load_table,
    merge_tables,
    new_table,
    save_table,
    select_entry,
    validate,
)


def entry(device: str, ms: float = 10.0, backend: str = "ort-cpu") -> dict:
    key = {"device": device, "backend": backend, "backend_version": "1.32.0", "precision": "fp32", "model": "m V100"}
    return {"key": key, "meta": {}, "stages": {"verify": [{"nodes": 1, "past": 64, "ms": ms}],
                                               "prefill": [{"tokens": 32, "ms": 5.0}]}}


def test_validate_names_the_missing_field() -> None:
    validate(new_table([entry("cpu")]))
    bad = new_table([entry("cpu")])
    del bad["entries"][0]["stages"]["verify"][0]["past"]
    with pytest.raises(LatencyTableError, match=r"entries\[0\]\.stages\.verify\[0\]\.past"):
        validate(bad)
    bad = new_table([entry("cpu")])
    del bad["entries"][0]["key"]["precision"]
    with pytest.raises(LatencyTableError, match="key.precision"):
        validate(bad)
    with pytest.raises(LatencyTableError, match="format_version"):
        validate({**new_table(), "format_version": 99})
    with pytest.raises(LatencyTableError, match="Not a dream-s-edge latency table"):
        validate({"entries": []})


def test_merge_and_save(tmp_path) -> None:
    a = new_table([entry("cpu", 10.0), entry("orin", 3.0, "trt")])
    b = new_table([entry("cpu", 12.0), entry("x86-gpu", 1.0, "trt")])
    merged = merge_tables(a, b)
    assert len(merged["entries"]) == 3
    assert select_entry(merged, device="cpu")["stages"]["verify"][0]["ms"] == 12.0  # the later one wins
    path = save_table(a, tmp_path / "t.json")
    save_table(new_table([entry("x86-gpu", 1.0, "trt")]), path)  # merges into the file
    table = load_table(path)
    assert {e["key"]["device"] for e in table["entries"]} == {"cpu", "orin", "x86-gpu"}
    with pytest.raises(LatencyTableError, match="2 latency table entries"):
        select_entry(table, backend="trt")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(LatencyTableError):
        load_table(tmp_path / "bad.json")
