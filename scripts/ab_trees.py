"""Tree settings side by side on one exported folder, interleaved per prompt: the A/B behind a tree change.

    python scripts/ab_trees.py --artifacts DIR --prompts held.jsonl:64,open.jsonl:128 \\
        --setting raw05=8,16,0.05,raw --setting cal10=8,16,0.1,calibrated --rounds 2 --json ab.json

A setting is NAME=DEPTH,NODES,MIN_PROB,raw|calibrated (a dynamic tree of the folder's top-k, scored with
the draft's raw probabilities or the folder's calibration). Every prompt is decoded autoregressively
and then with every setting, in an order that rotates per prompt and round, all on one `Session`; so a
2-core box drifting by 20% within minutes slows every setting alike, which back-to-back `bench` runs
cannot promise. Per prompt file and setting it reports τ, whole-call and decode-phase speedups over the
autoregressive runs, and whether every greedy answer equals the autoregressive one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dream_s_edge.bench.run import read_prompts  # noqa: E402
from runtime.images import load_image  # noqa: E402
from runtime.session import Session  # noqa: E402
from runtime.tree import TreeSpec  # noqa: E402


def _setting(text: str, top_k: int) -> tuple[str, TreeSpec, bool]:
    name, _, rest = text.partition("=")
    depth, nodes, min_prob, scoring = rest.split(",")
    if scoring not in ("raw", "calibrated"):
        raise SystemExit(f"--setting {text}: the last field is 'raw' or 'calibrated'")
    return name, TreeSpec.dynamic(top_k=top_k, depth=int(depth), node_budget=int(nodes), min_prob=float(min_prob)), \
        scoring == "calibrated"


def _prompts(text: str) -> list[tuple[str, object, str, int]]:
    """(file stem, image, question, max new tokens) of every line of every FILE:N given."""
    out = []
    for item in text.split(","):
        path, _, tokens = item.partition(":")
        for image, question in read_prompts(path):
            out.append((Path(path).stem, None if image is None else load_image(image), question, int(tokens or 64)))
    return out


def _add(totals: dict, metrics) -> None:
    totals["tokens"] += metrics.new_tokens
    totals["passes"] += metrics.target_passes
    totals["wall_s"] += metrics.wall_s
    totals["prefill_s"] += metrics.stage_s["prefill"]


def run(args: argparse.Namespace) -> dict:
    session = Session.from_dir(args.artifacts, threads=args.threads)
    calibration = session.draft.calibration
    settings = [_setting(s, session.tree.top_k) for s in args.setting]
    if any(cal for _, _, cal in settings) and calibration is None:
        raise SystemExit(f"{args.artifacts} is not calibrated: run `dream-s-edge calibrate --artifacts ...` first")
    prompts = _prompts(args.prompts)
    zero = {"tokens": 0, "passes": 0, "wall_s": 0.0, "prefill_s": 0.0, "identical": 0, "prompts": 0}
    totals = {(group, name): dict(zero) for group in {p[0] for p in prompts} for name in ["ar"] + [s[0] for s in settings]}
    session.generate(prompts[0][1], prompts[0][2], max_new_tokens=8)  # warm-up
    for rnd in range(args.rounds):
        for i, (group, image, question, tokens) in enumerate(prompts):
            base = session.generate(image, question, max_new_tokens=tokens, speculative=False)
            _add(totals[group, "ar"], base.metrics)
            shift = (i + rnd) % len(settings)
            for name, spec, calibrated in settings[shift:] + settings[:shift]:
                session.tree, session.draft.calibration = spec, calibration if calibrated else None
                result = session.generate(image, question, max_new_tokens=tokens)
                row = totals[group, name]
                _add(row, result.metrics)
                row["identical"] += int(np.array_equal(result.tokens, base.tokens))
                row["prompts"] += 1
    report = {"artifacts": str(args.artifacts), "rounds": args.rounds, "calibration": calibration and calibration.to_dict(),
              "settings": {name: {**spec.to_dict(), "calibrated": cal} for name, spec, cal in settings}, "results": {}}
    for (group, name), row in sorted(totals.items()):
        if name == "ar":
            continue
        ar = totals[group, "ar"]
        report["results"].setdefault(group, {})[name] = {
            "tau": row["tokens"] / max(row["passes"], 1),
            "speedup": ar["wall_s"] / row["wall_s"],
            "decode_speedup": (ar["wall_s"] - ar["prefill_s"]) / (row["wall_s"] - row["prefill_s"]),
            **row, "identical": f"{row['identical']}/{row['prompts']}"}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--prompts", required=True, help="FILE.jsonl:MAX_NEW_TOKENS[,FILE2.jsonl:N ...]")
    parser.add_argument("--setting", action="append", required=True, help="NAME=DEPTH,NODES,MIN_PROB,raw|calibrated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = run(args)
    for group, rows in report["results"].items():
        sys.stdout.write(f"{group}\n")
        for name, r in rows.items():
            sys.stdout.write(f"  {name:10s} tau {r['tau']:.3f}  whole-call {r['speedup']:.3f}x  "
                             f"decode {r['decode_speedup']:.3f}x  identical {r['identical']}\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
