"""`dream-s-edge` demo, export, ask, build-engines and camera: artifacts on disk and the torch-free runtime.

Every heavy import sits inside a function, so building the parser stays torch-free.
"""

from __future__ import annotations

import argparse
import sys

from dream_s_edge.commands.common import quiet_transformers, write_piece


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this group's subcommands."""
    _add_demo(sub)
    _add_export(sub)
    _add_calibrate(sub)
    _add_ask(sub)
    _add_build_engines(sub)
    _add_camera(sub)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from dream_s_edge.demo import DEFAULT_QUESTION

    p = sub.add_parser(
        "demo", help="the default model and its draft, exported once, answer about a photograph on onnxruntime; "
                     "prints tau and the speedup over autoregressive decoding"
    )
    p.add_argument("question", nargs="?", default=DEFAULT_QUESTION, help=f'default: "{DEFAULT_QUESTION}"')
    p.add_argument("--image", default="example:astronaut",
                   help="image file, or example:NAME for a bundled photograph (astronaut, coffee, ...)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: onnxruntime's default)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed decodes per method, alternating; the median of each gives the speedup (default 3)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from dream_s_edge.demo import DemoConfig, run_demo

    config = DemoConfig(question=args.question, image=args.image, max_new_tokens=args.max_new_tokens,
                        threads=args.threads or None, repeats=args.repeats)

    def announce(folder) -> None:  # only a first run exports, and only the export needs transformers
        quiet_transformers(args.verbose)
        print(f"exporting the default model and its draft to ONNX, once, into {folder} (a few minutes)",
              file=sys.stderr)

    started = []

    def write(piece: str) -> None:  # the question is shown once the answer starts (after any export note)
        if not started:
            started.append(True)
            write_piece(f"Q: {config.question.strip()}\nA: ")
        write_piece(piece)

    artifacts, report = run_demo(config, write=write, on_export=announce)
    write("")  # shows the question even when the answer was empty
    sys.stdout.write("\n\n")
    for line in demo_summary(artifacts, report):
        print(line)
    if not artifacts.shipped_draft:
        print("note: no trained default draft ships with this package yet (dream_s_edge/assets/default_draft/), "
              "so these numbers are for an untrained draft", file=sys.stderr)
    return 0


def demo_summary(artifacts, report) -> list[str]:
    """The lines `demo` prints after the answer: τ, tokens/s of both methods and the speedup."""
    spec, plain = report.speculative.metrics, report.autoregressive.metrics
    draft = "the shipped default draft" if artifacts.shipped_draft else "an untrained draft"
    return [
        f"speculative (onnxruntime CPU, {draft}): tau {report.tau:.2f} tokens per target pass, "
        f"{spec.tokens_per_s:.1f} tokens/s ({spec.new_tokens} tokens)",
        f"autoregressive (same session, same prompt): {plain.tokens_per_s:.1f} tokens/s ({plain.new_tokens} tokens)"
        + (f"; medians of {len(report.autoregressive_runs)} alternating runs each" if len(report.autoregressive_runs) > 1 else ""),
        f"speedup: {report.speedup:.2f}x over autoregressive decoding; greedy outputs identical: "
        f"{'yes' if report.identical else 'NO'}",
        f"artifacts: {artifacts.folder}" + (" (exported now)" if artifacts.exported else " (cached)"),
    ]


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export the target (and a draft) to ONNX + manifest for the torch-free runtime"
    )
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument(
        "--model", default="default", help="'default' (embedded SmolLM2 VLM) or a local SmolVLM folder"
    )
    p.add_argument("--draft", default=None,
                   help="draft folder, 'untrained', or 'none' for the target only (default: the shipped default "
                        "draft with --model default, else none)")
    p.add_argument("--max-context", type=int, default=1024, help="KV cache size in tokens (prompt + answer)")
    p.add_argument("--tree", choices=["dynamic", "static"], default="dynamic")
    p.add_argument("--top-k", type=int, default=4, help="tree branching")
    p.add_argument("--depth", type=int, default=5, help="tree depth")
    p.add_argument(
        "--node-budget", type=int, default=16, help="tree nodes verified per target pass, root included"
    )
    p.add_argument("--min-prob", type=float, default=0.0,
                   help="dynamic tree: leave out candidates below this cumulative draft probability (0: none)")
    p.add_argument("--search", default=None, metavar="SEARCH_JSON",
                   help="a `dream-s-edge search` result: export its chosen draft (the draft/ folder beside it) "
                        "with its tree, which becomes the folder's default tree (replaces --draft and the tree flags)")
    p.add_argument("--draft-weights", choices=["float32", "int8", "int4"], default="float32",
                   help="the draft step's MatMul weights (int8/int4: block-quantized, several times fewer bytes "
                        "read per draft call; the target stays float32, so outputs stay the target's own)")
    p.add_argument("--draft-vocab", type=int, default=None, metavar="N",
                   help="keep the draft's N most frequent tokens (by its training data's counts): a smaller "
                        "head on every draft call; the target still decides every token")
    p.add_argument("--no-parity", action="store_true", help="skip the Polygraphy parity checks")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="then calibrate the dynamic tree on N prompts of the distillation mix (as "
                        "`dream-s-edge calibrate` does; 0: leave the draft's probabilities raw)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    quiet_transformers(args.verbose)
    from pathlib import Path

    from dream_s_edge.default_draft import draft_or_default
    from dream_s_edge.generation import TreeOptions
    from export.pipeline import ExportConfig, export_artifacts

    tree = TreeOptions(
        kind=args.tree, top_k=args.top_k, depth=args.depth, node_budget=args.node_budget, min_prob=args.min_prob
    ).spec()
    draft = None if args.draft == "none" else draft_or_default(args.draft, args.model, fallback=None)
    if args.search is not None:
        draft, tree = _searched_draft(args)
    config = ExportConfig(
        out=Path(args.out),
        model=args.model,
        draft=draft,
        max_context=args.max_context,
        tree=tree,
        parity=not args.no_parity,
        draft_weights=args.draft_weights,
        draft_vocab=args.draft_vocab,
    )
    folder = export_artifacts(config)
    if args.calibrate > 0 and draft is not None:
        from dream_s_edge.calibration import CalibrationRun, calibrate, summary_lines

        for line in summary_lines(calibrate(CalibrationRun(artifacts=Path(folder), count=args.calibrate))):
            print(line, file=sys.stderr)
    print(folder)
    return 0


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    from dream_s_edge.calibration import DEFAULT_PROMPTS

    p = sub.add_parser(
        "calibrate", help="measure how often the target accepts the draft's candidates and score an exported "
                          "folder's dynamic trees by it (written into its manifest)")
    p.add_argument("--artifacts", required=True, help="folder written by `dream-s-edge export` (with a draft)")
    p.add_argument("--prompts", default=None,
                   help="JSON lines of {\"image\": path or null, \"question\": str} (default: prompts drawn from the "
                        "distillation mix with a seed of their own, never the bench's held-out prompts)")
    p.add_argument("--count", type=int, default=DEFAULT_PROMPTS,
                   help=f"prompts to decode (the first N of --prompts; default {DEFAULT_PROMPTS})")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dream_s_edge.calibration import CalibrationRun, calibrate, summary_lines
    from runtime.errors import UserInputError

    if args.count < 1:
        raise UserInputError("--count must be at least 1.", note=f"--count {args.count}")
    run = CalibrationRun(artifacts=Path(args.artifacts), prompts_file=Path(args.prompts) if args.prompts else None,
                         count=args.count, max_new_tokens=args.max_new_tokens, threads=args.threads)
    report = calibrate(run)
    for line in summary_lines(report):
        print(line)
    print(f"written into {run.artifacts / 'manifest.json'} (draft.calibration); "
          f"report {run.artifacts / 'calibration.json'}, plot {run.artifacts / 'calibration.png'}")
    return 0


def _searched_draft(args: argparse.Namespace):
    """(draft folder, tree) of a search result; refuses --draft beside --search and a result without its draft."""
    from pathlib import Path

    from runtime.errors import UserInputError
    from search.search import SearchResult

    if args.draft is not None:
        raise UserInputError("--search brings its own draft; --draft cannot be given with it.",
                             hint="drop --draft, or drop --search and pass the tree flags yourself")
    path = Path(args.search)
    if not path.is_file():
        raise UserInputError(f"No search result at {path}.", hint="pass the search.json that `dream-s-edge search` wrote")
    result = SearchResult.load(path)
    folder = path.parent / "draft"
    if not (folder / "config.json").is_file():
        raise UserInputError(f"The search result's draft folder {folder} is missing.",
                             hint="rerun `dream-s-edge search --out DIR`: it writes DIR/search.json and DIR/draft/")
    return str(folder), result.tree


def _add_ask(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="answer a question with exported artifacts on onnxruntime (no torch)")
    p.add_argument("question", help="the question to ask")
    p.add_argument("--artifacts", required=True, help="folder written by `dream-s-edge export`")
    p.add_argument("--image", help="image file (omit for a text-only question)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument(
        "--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu", help="onnxruntime provider"
    )
    p.add_argument("--autoregressive", action="store_true", help="decode without the draft")
    p.set_defaults(func=_run_ask)


def _run_ask(args: argparse.Namespace) -> int:
    from runtime.session import Session

    session = Session.from_dir(args.artifacts, provider=args.provider, speculative=not args.autoregressive)
    for piece in session.ask(args.image, args.question, stream=True, max_new_tokens=args.max_new_tokens):
        write_piece(piece)
    sys.stdout.write("\n")
    m = session.last_result.metrics
    sys.stderr.write(
        f"[{len(session.last_result.tokens)} tokens, tau {m.tau:.2f}, {m.tokens_per_s:.1f} tokens/s]\n"
    )
    return 0


def _add_build_engines(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engines", help="build TensorRT engines from an exported folder (on the device)")
    p.add_argument("--artifacts", required=True, help="folder written by `dream-s-edge export`")
    p.add_argument("--precision", choices=["fp16", "int8", "int4-weight-only"], default="fp16")
    p.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace on the device")
    p.add_argument("--host-mb", type=int, default=4096, help="host memory for tactics (TACTIC_DRAM)")
    p.add_argument("--timing-cache", default=None, help="timing cache file (default: shared per TRT + GPU)")
    p.set_defaults(func=_run_build_engines)


def _run_build_engines(args: argparse.Namespace) -> int:
    from pathlib import Path

    from export.trt_build import EngineBuildConfig, build_engines

    config = EngineBuildConfig(artifacts=Path(args.artifacts), precision=args.precision,
                               workspace_mb=args.workspace_mb, host_mb=args.host_mb,
                               timing_cache=Path(args.timing_cache) if args.timing_cache else None)
    print(build_engines(config))
    return 0


def _add_camera(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "camera", help="answer questions about a live camera on a local web page (exported artifacts, no torch)"
    )
    p.add_argument("--artifacts", required=True, help="folder written by `dream-s-edge export`")
    p.add_argument(
        "--source", required=True, help="camera index (0), video file, image folder or stream URL"
    )
    p.add_argument("--port", type=int, default=8765, help="web page port on 127.0.0.1 (0: any free port)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument(
        "--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu", help="onnxruntime provider"
    )
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: onnxruntime's default)")
    p.add_argument("--autoregressive", action="store_true", help="decode without the draft")
    p.add_argument("--repeat", help='a question asked every --every seconds, e.g. "Is anyone at the door?"')
    p.add_argument("--every", type=float, default=30.0, help="period of --repeat, seconds")
    p.add_argument("--log", help="JSON-lines file every answer is appended to")
    p.set_defaults(func=_run_camera)


def _run_camera(args: argparse.Namespace) -> int:
    from pathlib import Path

    from runtime.camera.app import CameraApp
    from runtime.camera.config import CameraConfig

    config = CameraConfig(
        artifacts=Path(args.artifacts),
        source=args.source,
        port=args.port,
        provider=args.provider,
        threads=args.threads or None,
        speculative=not args.autoregressive,
        max_new_tokens=args.max_new_tokens,
        repeat_question=args.repeat,
        repeat_every_s=args.every,
        answer_log=Path(args.log) if args.log else None,
    )
    app = CameraApp.from_config(config)
    where = f"http://127.0.0.1:{config.port}/" if config.port else "a free port of 127.0.0.1"
    print(f"camera page: {where}  (Ctrl-C to stop)", file=sys.stderr)
    app.serve()
    return 0
