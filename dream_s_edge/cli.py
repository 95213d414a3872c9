"""The `dream-s-edge` command line. Thin: parse flags into config dataclasses, call one library
function, print. Every user error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from runtime.errors import DreamSEdgeError
from runtime.tree import TREE_PRESETS

EXIT_USER_ERROR = 2


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer a question about an image, streaming the tokens")
    p.add_argument("question", help="the question to ask")
    p.add_argument("--image", help="image file, or example:NAME for a bundled photograph (astronaut, coffee, ...)")
    p.add_argument("--model", default="default", help="'default' (embedded SmolLM2 VLM) or a local HF model folder")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-context", type=int, default=1024, help="KV cache size in tokens (prompt + answer)")
    p.add_argument("--speculative", action="store_true", help="speculative tree decoding with a draft")
    p.add_argument("--draft", default="untrained", help="draft folder, or 'untrained' for a fresh DREAM draft")
    p.add_argument(
        "--tree", default="dynamic", help="dynamic (EAGLE-2, sized by --top-k/--depth/--node-budget), chain, or a preset: "
        + ", ".join(sorted(TREE_PRESETS)),
    )
    p.add_argument("--top-k", type=int, default=4, help="tree branching")
    p.add_argument("--depth", type=int, default=5, help="tree depth")
    p.add_argument("--node-budget", type=int, default=16, help="tree nodes verified per target pass, root included")
    p.set_defaults(func=_run_generate)


def _add_target(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("target", help="the target VLM: prepare the embedded default")
    tsub = p.add_subparsers(dest="target_command", required=True)
    prep = tsub.add_parser("prepare", help="convert the embedded default target once and print its folder")
    prep.set_defaults(func=_run_target_prepare)


def _run_generate(args: argparse.Namespace) -> int:
    _quiet_transformers(args.verbose)
    from dream_s_edge.generation import GenerationConfig, TreeOptions, run_generate

    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        max_context=args.max_context,
    )
    tree = None
    if args.speculative:
        tree = TreeOptions(kind=args.tree, top_k=args.top_k, depth=args.depth, node_budget=args.node_budget)
    report = run_generate(
        model=args.model,
        image=args.image,
        question=args.question,
        config=config,
        tree=tree,
        draft=args.draft,
        write=_write_piece,
    )
    sys.stdout.write("\n")
    if tree is not None:
        sys.stderr.write(f"[{report.summary()}]\n")
    return 0


def _run_target_prepare(args: argparse.Namespace) -> int:
    _quiet_transformers(args.verbose)
    from dream_s_edge.embedded import ensure_default_target

    print(ensure_default_target())
    return 0


def _write_piece(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render the README's CLI reference)."""
    parser = argparse.ArgumentParser(
        prog="dream-s-edge", description="Speculative decoding for vision-language models on edge devices."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_target(sub)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")


def _quiet_transformers(verbose: bool) -> None:
    """Silences transformers' own warnings and bars unless -v; only torch-side commands call it."""
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dream-s-edge` console script."""
    args = build_parser().parse_args(argv)
    try:
        _configure_logging(args.verbose)
        return args.func(args)
    except DreamSEdgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
