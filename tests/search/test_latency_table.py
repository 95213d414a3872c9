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


def test_flat_verify_entry_is_derived_and_labelled(tmp_path) -> None:
    from dream_s_edge.cli import main
    from search.latency_table import flat_verify_entry, load_table, new_table, save_table

    entry = {"key": {"device": "cpu: test", "backend": "ort-cpu", "backend_version": "1", "precision": "fp32",
                     "model": "m"},
             "meta": {"created": "now"},
             "stages": {"vision": [{"images": 1, "ms": 5.0}], "prefill": [{"tokens": 32, "ms": 40.0}],
                        "verify": [{"nodes": n, "past": p, "ms": 10.0 + n + p / 100} for n in (1, 4, 16) for p in (64, 256)],
                        "draft": [], "tree_host": [], "blocks": {}}}
    flat = flat_verify_entry(entry)
    assert {(r["nodes"], r["past"]): r["ms"] for r in flat["stages"]["verify"]} == {
        (n, p): 11.0 + p / 100 for n in (1, 4, 16) for p in (64, 256)}
    assert flat["key"]["device"] == "cpu: test (flat verify)" and flat["meta"]["derived"]["from"] == entry["key"]
    assert entry["stages"]["verify"][2]["ms"] == 10.0 + 4 + 0.64  # the measured entry is left alone
    source = save_table(new_table([entry]), tmp_path / "cpu.json")
    assert main(["flat-verify-table", "--table", str(source), "--out", str(tmp_path / "flat.json")]) == 0
    assert load_table(tmp_path / "flat.json")["entries"][0]["key"]["device"] == "cpu: test (flat verify)"
    entry["stages"]["verify"] = [r for r in entry["stages"]["verify"] if r["nodes"] > 1]
    with pytest.raises(Exception, match="one-node verify"):
        flat_verify_entry(entry)
