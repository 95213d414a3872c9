"""Per-device latency tables: a documented, versioned JSON format, validation, merge, and lookups.

Place in the data flow: `dream-s-edge profile` (`search/profile.py`) measures the runners on one
device and writes a table; tables from several devices merge into one file (`merge_tables`);
`search/latency.py` predicts step latencies from it and `dream-s-edge tune` reads it. Search only
reads tables; nothing times itself at model load.

Format (`format_version` 2)::

    {"format": "dream-s-edge-latency-table", "format_version": 2,
     "entries": [ENTRY, ...]}                       one entry per (device, backend, version, precision, model)

    ENTRY = {
      "key": {"device": "cpu: AMD EPYC 7B13 x2", "backend": "ort-cpu", "backend_version": "1.32.0",
              "precision": "fp32", "model": "smolvlm L30 H576 V49155"},
      "meta": {"created": ISO time, "repeats": 5, "threads": 2, "max_context": 1024, "node_budget": 16,
               "layer_runs": 5, "seconds": 312.0},
      "stages": {                                     every time is a median in milliseconds
        "vision":  [{"images": 1, "ms": ..}],
        "prefill": [{"tokens": 128, "ms": ..}, ...],
        "verify":  [{"nodes": 4, "past": 256, "ms": ..}, ...],           target verify (runner call)
        "draft":   [{"variant": "base", "spec": {DraftSpec choice}, "call": "advance" | "tree_step",
                     "new": 4, "past": 256, "ms": ..}, ...],            one draft runner call (tree steps
                                                                        timed 4 back to back, as the loop runs them;
                                                                        "round": advance + the whole tree, with "tree")
        "tree_host": [{"depth": 5, "top_k": 4, "nodes": 16, "ms": ..}],  host work of one tree build
        "blocks":  {"decoder_block@576": ms, ...}                        per-block costs (repeat - baseline)
        "layers":  {STAGE: LAYERS, ...}                                  optional: trt only (see below)
      }}

    LAYERS = {"shape": {"nodes": 16, "past": 256}, "runs": 5, "total_ms": 3.1,
              "graphs": {"decoder": {"/model/layers.0/self_attn/q_proj/MatMul": 0.04, ...}}}

`stages.layers` (optional; written by `profile --backend trt`, `search/layer_profile.py`) holds, per
profiled stage (STAGE: "vision", "prefill", "verify", "draft_advance", "draft_tree_step"), the mean
milliseconds of every engine layer over `runs` calls with TensorRT's IProfiler attached, per graph,
in execution order, at one `shape`; `total_ms` sums them (engine time only: no host work or copies).
Profiled calls are slower than plain ones, so these rows explain where a stage's time goes; the
search reads the stage rows above, never these.

`variant` names the draft export a row was measured on; `spec` holds the DraftSpec fields that
vary (num_layers, hidden_size, num_heads, interaction, draft_vocab_size, visual_keep_ratio).

Versions: 2 adds the optional `stages.layers` above (version 1 documented a per-graph "layers"
that nothing wrote). Version 1 tables load unchanged and merge with version 2 ones; a merged or
re-saved table is written as version 2.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime.errors import UserInputError

FORMAT = "dream-s-edge-latency-table"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # every version 1 table is a valid version 2 table (layers is optional)
KEY_FIELDS = ("device", "backend", "backend_version", "precision", "model")
STAGES = {  # stage -> fields every row must have
    "vision": ("images", "ms"),
    "prefill": ("tokens", "ms"),
    "verify": ("nodes", "past", "ms"),
    "draft": ("variant", "spec", "call", "new", "past", "ms"),
    "tree_host": ("depth", "top_k", "nodes", "ms"),
}


class LatencyTableError(UserInputError):
    """A latency table that does not follow the format (the field is named)."""


def new_table(entries: list[dict] | None = None) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "entries": list(entries or [])}


def key_of(entry: dict) -> tuple:
    return tuple(entry["key"][k] for k in KEY_FIELDS)


def validate(table: dict) -> dict:
    """Checks a table against the format; returns it.

    Raises:
        LatencyTableError: naming the first field that is missing or wrong.
    """
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        raise LatencyTableError("Not a dream-s-edge latency table (field 'format').")
    if table.get("format_version") not in READABLE_VERSIONS:
        raise LatencyTableError("Unsupported latency table format_version.",
                                note=f"{table.get('format_version')!r}, this version reads {READABLE_VERSIONS}",
                                hint="re-run dream-s-edge profile")
    if not isinstance(table.get("entries"), list):
        raise LatencyTableError("The latency table misses the list 'entries'.")
    for i, entry in enumerate(table["entries"]):
        _validate_entry(entry, f"entries[{i}]")
    return table


def _validate_entry(entry: dict, where: str) -> None:
    for section in ("key", "stages"):
        if not isinstance(entry.get(section), dict):
            raise LatencyTableError(f"The latency table misses '{where}.{section}'.")
    for field in KEY_FIELDS:
        if not isinstance(entry["key"].get(field), str):
            raise LatencyTableError(f"The latency table misses '{where}.key.{field}' (a string).")
    if "layers" in entry["stages"]:
        _validate_layers(entry["stages"]["layers"], f"{where}.stages.layers")
    for stage, rows in entry["stages"].items():
        if stage not in STAGES:
            continue  # blocks, layers (checked above) and later additions
        if not isinstance(rows, list):
            raise LatencyTableError(f"'{where}.stages.{stage}' must be a list of rows.")
        for j, row in enumerate(rows):
            for field in STAGES[stage]:
                if field not in row:
                    raise LatencyTableError(f"The latency table misses '{where}.stages.{stage}[{j}].{field}'.")
            if not isinstance(row["ms"], (int, float)) or row["ms"] < 0:
                raise LatencyTableError(f"'{where}.stages.{stage}[{j}].ms' must be a non-negative number.")


def _validate_layers(layers: dict, where: str) -> None:
    """Checks the optional per-layer rows: {stage: {"runs", "graphs": {graph: {layer: ms}}, ...}}."""
    if not isinstance(layers, dict):
        raise LatencyTableError(f"'{where}' must be an object of stages.")
    for stage, row in layers.items():
        at = f"{where}.{stage}"
        if not isinstance(row, dict) or not isinstance(row.get("graphs"), dict):
            raise LatencyTableError(f"The latency table misses '{at}.graphs' (an object of graphs).")
        if not isinstance(row.get("runs"), int) or row["runs"] < 1:
            raise LatencyTableError(f"'{at}.runs' must be a positive integer.")
        for graph, times in row["graphs"].items():
            if not isinstance(times, dict):
                raise LatencyTableError(f"'{at}.graphs.{graph}' must be an object of layer -> ms.")
            for layer, ms in times.items():
                if not isinstance(ms, (int, float)) or ms < 0:
                    raise LatencyTableError(f"'{at}.graphs.{graph}' layer {layer!r} must have non-negative ms.",
                                            note=f"{ms!r}")


def merge_tables(*tables: dict) -> dict:
    """One table holding every entry; an entry whose key repeats replaces the earlier one."""
    merged: dict[tuple, dict] = {}
    for table in tables:
        for entry in validate(table)["entries"]:
            merged[key_of(entry)] = entry
    return new_table(list(merged.values()))


def load_table(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LatencyTableError(f"No latency table at {path}.", hint="write one with dream-s-edge profile --out FILE")
    try:
        return validate(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise LatencyTableError(f"{path} is not valid JSON.", note=str(error)) from error


def save_table(table: dict, path: str | Path, merge: bool = True) -> Path:
    """Writes a table; with `merge`, entries already in the file for other keys are kept."""
    path = Path(path)
    if merge and path.is_file():
        table = merge_tables(load_table(path), table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(validate(table), indent=1) + "\n")
    return path


def select_entry(table: dict, **key) -> dict:
    """The one entry matching the given key fields (all fields optional).

    Raises:
        LatencyTableError: none or several match.
    """
    found = [e for e in table["entries"] if all(e["key"].get(k) == v for k, v in key.items() if v is not None)]
    if len(found) != 1:
        keys = [e["key"] for e in table["entries"]]
        raise LatencyTableError(f"{len(found)} latency table entries match {key}.", note=f"entries: {keys}",
                                hint="name the device / backend / precision")
    return found[0]


def flat_verify_entry(entry: dict, label: str = "flat verify") -> dict:
    """A what-if entry derived from a measured one: every verify row costs what one node costs at its
    past length, as on a large GPU whose verify time hardly grows with the node count. Everything
    else (draft, prefill, vision, host) is kept. The key's device gets `label` appended and the
    entry's meta records what it was derived from, so it is never taken for a measurement.

    Raises:
        LatencyTableError: the entry has no one-node verify row at some past length.
    """
    import copy

    out = copy.deepcopy(entry)
    one = {row["past"]: row["ms"] for row in entry["stages"]["verify"] if row["nodes"] == 1}
    missing = sorted({row["past"] for row in entry["stages"]["verify"]} - set(one))
    if missing:
        raise LatencyTableError("The entry has no one-node verify time to flatten to.",
                                note=f"past lengths without a nodes=1 row: {missing}",
                                hint="profile with the default verify grid (it includes one node)")
    for row in out["stages"]["verify"]:
        row["ms"] = one[row["past"]]
    out["stages"].pop("layers", None)
    out["key"]["device"] = f"{entry['key']['device']} ({label})"
    out["meta"]["derived"] = {"from": dict(entry["key"]), "how": "verify ms of every node count := its 1-node ms"}
    return out
