"""`dream-s-edge` generate and target: the PyTorch target, plain and speculative generation, vision training.

Every heavy import sits inside a function, so building the parser stays torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys

from dream_s_edge.commands.common import quiet_transformers, write_piece
from runtime.tree import TREE_PRESETS


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this group's subcommands."""
    _add_generate(sub)
    _add_target(sub)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer a question about an image, streaming the tokens")
    p.add_argument("question", help="the question to ask")
    p.add_argument(
        "--image", help="image file, or example:NAME for a bundled photograph (astronaut, coffee, ...)"
    )
    p.add_argument(
        "--model", default="default", help="'default' (embedded SmolLM2 VLM) or a local HF model folder"
    )
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-context", type=int, default=1024, help="KV cache size in tokens (prompt + answer)")
    p.add_argument("--speculative", action="store_true", help="speculative tree decoding with a draft")
    p.add_argument(
        "--draft", default=None,
        help="draft folder, 'untrained' for a fresh DREAM draft, or 'oracle' (default: the shipped default draft "
             "with --model default, else untrained)",
    )
    p.add_argument(
        "--tree",
        default="dynamic",
        help="dynamic (EAGLE-2, sized by --top-k/--depth/--node-budget), chain, or a preset: "
        + ", ".join(sorted(TREE_PRESETS)),
    )
    p.add_argument("--top-k", type=int, default=4, help="tree branching")
    p.add_argument("--depth", type=int, default=5, help="tree depth")
    p.add_argument(
        "--node-budget", type=int, default=16, help="tree nodes verified per target pass, root included"
    )
    p.add_argument("--min-prob", type=float, default=0.0,
                   help="dynamic tree: leave out candidates below this cumulative draft probability (0: none)")
    p.set_defaults(func=_run_generate)


VISION_TRAIN_FLAGS = (
    "out_dir",
    "model_dir",
    "asset_path",
    "seed",
    "probe_steps",
    "lm_steps",
    "batch_size",
    "questions_per_image",
    "caption_prob",
    "lr",
    "lora_rank",
    "lora_projections",
    "position_turns",
    "tower_lr_scale",
    "polish_steps",
    "polish_lr",
    "polish_caption_prob",
    "device",
    "threads",
    "stop_after",
    "resume",
)


VISION_EVAL_FLAGS = (
    "out_dir",
    "model_dir",
    "weights",
    "per_type",
    "batch_size",
    "swap_pairs",
    "photos",
    "device",
    "threads",
)


def _add_target(sub: argparse._SubParsersAction) -> None:
    from dream_s_edge.cli_flags import add_config_flags
    from dream_s_edge.vision_training.config import PRESETS as VISION_PRESETS
    from dream_s_edge.vision_training.config import EvalConfig, VisionTrainConfig

    p = sub.add_parser(
        "target", help="the target VLM: prepare the embedded default, train and score its vision"
    )
    tsub = p.add_subparsers(dest="target_command", required=True)
    prep = tsub.add_parser("prepare", help="convert the embedded default target once and print its folder")
    prep.set_defaults(func=_run_target_prepare)
    train = tsub.add_parser(
        "train-vision", help="train the default target's vision tower on scene QA (resumable)"
    )
    train.add_argument(
        "--preset", default="default", choices=sorted(VISION_PRESETS), help="default: about 90 min on 2 idle CPU cores"
    )
    add_config_flags(train, VisionTrainConfig, VISION_TRAIN_FLAGS, overrides_only=True)
    train.set_defaults(func=_run_train_vision)
    evaluate = tsub.add_parser(
        "eval", help="exact-match accuracy per question type, trained vs untrained tower"
    )
    add_config_flags(evaluate, EvalConfig, VISION_EVAL_FLAGS)
    evaluate.set_defaults(func=_run_target_eval)


def _run_train_vision(args: argparse.Namespace) -> int:
    quiet_transformers(args.verbose)
    from dream_s_edge.cli_flags import given_flags
    from dream_s_edge.vision_training import VisionTrainConfig, train_vision

    config = VisionTrainConfig.from_name(args.preset, **given_flags(args, VISION_TRAIN_FLAGS))
    print(train_vision(config))
    return 0


def _run_target_eval(args: argparse.Namespace) -> int:
    quiet_transformers(args.verbose)
    from dream_s_edge.cli_flags import config_from_args
    from dream_s_edge.vision_training import EvalConfig, evaluate_target

    report = evaluate_target(config_from_args(EvalConfig, args, VISION_EVAL_FLAGS))
    print(json.dumps(report.get("summary", report), indent=2, default=str)[:4000])
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    quiet_transformers(args.verbose)
    from dream_s_edge.default_draft import draft_or_default
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
        tree = TreeOptions(kind=args.tree, top_k=args.top_k, depth=args.depth, node_budget=args.node_budget,
                           min_prob=args.min_prob)
    report = run_generate(
        model=args.model,
        image=args.image,
        question=args.question,
        config=config,
        tree=tree,
        draft=draft_or_default(args.draft, args.model),
        write=write_piece,
    )
    sys.stdout.write("\n")
    if tree is not None:
        sys.stderr.write(f"[{report.summary()}]\n")
    return 0


def _run_target_prepare(args: argparse.Namespace) -> int:
    quiet_transformers(args.verbose)
    from dream_s_edge.embedded import ensure_default_target

    print(ensure_default_target())
    return 0
