"""Soak the camera app: N consecutive questions on one session, JSON report with RSS growth and failures.

    python scripts/soak_camera.py --artifacts ARTIFACTS --source clip.avi --questions 1000 --out soak.json

Without --source it writes a short generated video (OpenCV VideoWriter) next to the report and uses it.
Exit status 0 when the run passed (growth under --max-growth-pct and no failure), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.camera.soak import SoakConfig, run_soak  # noqa: E402
from runtime.camera.synthetic import write_test_video  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", required=True, type=Path)
    p.add_argument("--source", help="video file, image folder, camera index or URL (default: a generated video)")
    p.add_argument("--out", default=Path("soak_camera.json"), type=Path)
    p.add_argument("--questions", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--sample-every", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-growth-pct", type=float, default=5.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    # One "max_new_tokens capped by max_context" line per question would drown the progress lines.
    logging.getLogger("runtime.decode").setLevel(logging.ERROR)
    source = args.source or str(write_test_video(args.out.parent / "soak_source.avi"))
    config = SoakConfig(artifacts=args.artifacts, source=source, out=args.out, questions=args.questions,
                        warmup=args.warmup, sample_every=args.sample_every, max_new_tokens=args.max_new_tokens,
                        threads=args.threads, max_growth_pct=args.max_growth_pct)
    report = run_soak(config)
    summary = {k: report[k] for k in ("questions", "failures", "rss_baseline_mb", "rss_final_mb", "rss_growth_pct",
                                      "mean_tau", "mean_tokens_per_s", "wall_s", "passed")}
    sys.stdout.write(json.dumps(summary, indent=2) + f"\nreport: {args.out}\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
