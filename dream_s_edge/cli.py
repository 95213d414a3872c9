"""The `dream-s-edge` command line. Thin: parse flags into config dataclasses, call one library
function, print. Every user error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from runtime.errors import DreamSEdgeError
from runtime.tree import TREE_PRESETS

EXIT_USER_ERROR = 2


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
        "--draft", default="untrained", help="draft folder, or 'untrained' for a fresh DREAM draft"
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
    "lr",
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
        "--preset", default="default", choices=sorted(VISION_PRESETS), help="default: about 1.5 h on 2 CPU cores"
    )
    add_config_flags(train, VisionTrainConfig, VISION_TRAIN_FLAGS, overrides_only=True)
    train.set_defaults(func=_run_train_vision)
    evaluate = tsub.add_parser(
        "eval", help="exact-match accuracy per question type, trained vs untrained tower"
    )
    add_config_flags(evaluate, EvalConfig, VISION_EVAL_FLAGS)
    evaluate.set_defaults(func=_run_target_eval)


def _run_train_vision(args: argparse.Namespace) -> int:
    _quiet_transformers(args.verbose)
    from dream_s_edge.cli_flags import given_flags
    from dream_s_edge.vision_training import VisionTrainConfig, train_vision

    config = VisionTrainConfig.from_name(args.preset, **given_flags(args, VISION_TRAIN_FLAGS))
    print(train_vision(config))
    return 0


def _run_target_eval(args: argparse.Namespace) -> int:
    _quiet_transformers(args.verbose)
    from dream_s_edge.cli_flags import config_from_args
    from dream_s_edge.vision_training import EvalConfig, evaluate_target

    report = evaluate_target(config_from_args(EvalConfig, args, VISION_EVAL_FLAGS))
    print(json.dumps(report.get("summary", report), indent=2, default=str)[:4000])
    return 0


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


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export the target (and a draft) to ONNX + manifest for the torch-free runtime"
    )
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument(
        "--model", default="default", help="'default' (embedded SmolLM2 VLM) or a local SmolVLM folder"
    )
    p.add_argument("--draft", default=None, help="draft folder, or 'untrained'; omit for the target only")
    p.add_argument("--max-context", type=int, default=1024, help="KV cache size in tokens (prompt + answer)")
    p.add_argument("--tree", choices=["dynamic", "static"], default="dynamic")
    p.add_argument("--top-k", type=int, default=4, help="tree branching")
    p.add_argument("--depth", type=int, default=5, help="tree depth")
    p.add_argument(
        "--node-budget", type=int, default=16, help="tree nodes verified per target pass, root included"
    )
    p.add_argument("--no-parity", action="store_true", help="skip the Polygraphy parity checks")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    _quiet_transformers(args.verbose)
    from pathlib import Path

    from dream_s_edge.generation import TreeOptions
    from export.pipeline import ExportConfig, export_artifacts

    tree = TreeOptions(
        kind=args.tree, top_k=args.top_k, depth=args.depth, node_budget=args.node_budget
    ).spec()
    config = ExportConfig(
        out=Path(args.out),
        model=args.model,
        draft=args.draft,
        max_context=args.max_context,
        tree=tree,
        parity=not args.no_parity,
    )
    print(export_artifacts(config))
    return 0


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
        _write_piece(piece)
    sys.stdout.write("\n")
    m = session.last_result.metrics
    sys.stderr.write(
        f"[{len(session.last_result.tokens)} tokens, tau {m.tau:.2f}, {m.tokens_per_s:.1f} tokens/s]\n"
    )
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


def _add_distill_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill-data", help="self-distillation data: the target's answers and features, sharded"
    )
    p.add_argument("--out", required=True, help="data folder (an existing one is resumed)")
    p.add_argument(
        "--model", default="default", help="'default' (embedded target) or a local HF model folder"
    )
    p.add_argument("--num-scene", type=int, default=96, help="procedural scene prompts")
    p.add_argument("--num-photo", type=int, default=32, help="real photograph prompts")
    p.add_argument("--num-text", type=int, default=96, help="text-only instruction prompts")
    p.add_argument("--samples-per-prompt", type=int, default=0, help="sampled answers besides the greedy one")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=16, help="sequences per shard file")
    p.add_argument("--max-mb", type=int, default=1024, help="cap on the data size on disk, MB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=_run_distill_data)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="distil a DREAM draft (one process, or several under torchrun)")
    p.add_argument("--data", required=True, help="folder written by distill-data")
    p.add_argument(
        "--out", required=True, help="run folder: checkpoint, train_log.jsonl, draft/ (resumed if present)"
    )
    p.add_argument("--model", default="default", help="the target the data was built from")
    p.add_argument(
        "--preset", default="dream-default", help="draft preset (dream-default, dream-small, eagle, eagle3)"
    )
    p.add_argument(
        "--visual-keep-ratio", type=float, default=None, help="override the preset's VTC keep ratio"
    )
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--grad-accum", type=int, default=1, help="sequences per step and process")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--feat-weight", type=float, default=0.2)
    p.add_argument("--intermed-weight", type=float, default=0.2)
    p.add_argument("--ttt-steps", type=int, default=0, help="training-time test: unrolled steps (EAGLE-3)")
    p.add_argument(
        "--feature-noise", type=float, default=0.0, help="uniform noise amplitude on input features"
    )
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument(
        "--val-every", type=int, default=0, help="validation tau period in steps (0: at the end only)"
    )
    p.add_argument("--val-initial", action="store_true", help="also measure tau before training")
    p.add_argument("--val-prompts", type=int, default=4)
    p.add_argument("--val-max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=_run_train)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="tau, tokens/s and speedup of speculative vs autoregressive decoding, "
                                     "with HF generate as the reference")
    p.add_argument("--backend", default="torch",
                   help="torch, ort-cpu, ort-cuda or trt (the last three run an exported --artifacts folder)")
    p.add_argument("--prompts", required=True, help='JSON lines: {"image": path or null, "question": str}')
    p.add_argument(
        "--json", required=True, dest="json_out", help="report path (a .png plot is written beside it)"
    )
    p.add_argument("--artifacts", default=None, help="ort-*/trt: folder written by `dream-s-edge export`")
    p.add_argument("--precision", default=None, help="trt: which engines (default: the only one built)")
    p.add_argument("--model", default=None,
                   help="PyTorch model: 'default' or a local HF folder (default: the embedded target, or the "
                        "folder the artifacts were exported from); HF generate is timed on it")
    p.add_argument("--no-hf", dest="hf", action="store_false", help="skip timing HF transformers' generate")
    p.add_argument("--draft", default="untrained", help="torch: draft folder, 'untrained' or 'oracle'")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-context", type=int, default=1024, help="torch only (artifacts fix their own)")
    p.add_argument("--tree", choices=["dynamic", "static"], default=None,
                   help="default: dynamic (torch) or the artifacts' tree")
    p.add_argument("--top-k", type=int, default=None, help="default: 4 (torch) or the artifacts' tree")
    p.add_argument("--depth", type=int, default=None, help="default: 5 (torch) or the artifacts' tree")
    p.add_argument("--node-budget", type=int, default=None, help="default: 16 (torch) or the artifacts' tree")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch and onnxruntime (0: their defaults)")
    p.set_defaults(func=_run_bench)


def _set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _run_distill_data(args: argparse.Namespace) -> int:
    _quiet_transformers(args.verbose)
    _set_threads(args.threads)
    from dream_s_edge.distill import DistillDataConfig, build_distill_data, read_manifest

    config = DistillDataConfig(
        out_dir=args.out,
        model=args.model,
        num_scene=args.num_scene,
        num_photo=args.num_photo,
        num_text=args.num_text,
        samples_per_prompt=args.samples_per_prompt,
        max_new_tokens=args.max_new_tokens,
        shard_size=args.shard_size,
        max_bytes=args.max_mb << 20,
        seed=args.seed,
    )
    folder = build_distill_data(config)
    manifest = read_manifest(folder)
    choice = manifest.get("layer_selection", {})
    print(
        f"{folder}: {manifest['sequences']} sequences, {manifest['bytes'] / 1e6:.1f} MB on disk; "
        f"entropy-selected layer {choice.get('layer')} of band {choice.get('band')}"
    )
    return 0


def _run_train(args: argparse.Namespace) -> int:
    _quiet_transformers(args.verbose)
    _set_threads(args.threads)
    from dream_s_edge.distill import TrainConfig, train_draft

    config = TrainConfig(
        data_dir=args.data,
        out_dir=args.out,
        model=args.model,
        preset=args.preset,
        visual_keep_ratio=args.visual_keep_ratio,
        steps=args.steps,
        grad_accum=args.grad_accum,
        lr=args.lr,
        warmup=args.warmup,
        kl_weight=args.kl_weight,
        feat_weight=args.feat_weight,
        intermed_weight=args.intermed_weight,
        ttt_steps=args.ttt_steps,
        feature_noise=args.feature_noise,
        save_every=args.save_every,
        val_every=args.val_every,
        val_initial=args.val_initial,
        val_prompts=args.val_prompts,
        val_max_new_tokens=args.val_max_new_tokens,
        seed=args.seed,
        device=args.device,
    )
    print(train_draft(config))
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    _quiet_transformers(args.verbose)
    if args.backend == "torch" or args.hf:
        _set_threads(args.threads)
    from dream_s_edge.bench import BenchConfig, run_bench

    config = BenchConfig(
        prompts=args.prompts,
        json_out=args.json_out,
        backend=args.backend,
        model=args.model,
        draft=args.draft,
        artifacts=args.artifacts,
        precision=args.precision,
        max_new_tokens=args.max_new_tokens,
        max_context=args.max_context,
        tree_kind=args.tree,
        top_k=args.top_k,
        depth=args.depth,
        node_budget=args.node_budget,
        limit=args.limit,
        hf=args.hf,
        threads=args.threads,
    )
    report = run_bench(config)
    hf = report["hf_generate"]
    versus = f", HF generate {hf['tokens_per_s']:.1f} tok/s (AR/HF {report['ar_vs_hf']:.2f}x)" if hf else ""
    print(
        f"tau {report['tau']['mean']:.2f}, AR {report['tokens_per_s']['autoregressive']:.1f} tok/s, "
        f"speculative {report['tokens_per_s']['speculative']:.1f} tok/s, speedup {report['speedup']:.2f}x"
        f"{versus}, greedy identical: {report['greedy_identical']} -> {args.json_out}"
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


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure a backend's stage latencies into a latency table")
    p.add_argument("--backend", choices=["ort-cpu", "ort-cuda", "trt"], default="ort-cpu")
    p.add_argument("--artifacts", required=True, help="folder written by `dream-s-edge export --draft ...`")
    p.add_argument("--out", required=True, help="latency table JSON (merged into when it exists; plot beside it)")
    p.add_argument("--precision", default=None, help="trt: which engines (default: the only ones built)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="", help="comma-separated draft variants (default: all)")
    p.add_argument("--check", type=int, default=0, help="also check predictions on N random DraftSpecs")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time, for a CPU shared with other work (use with --threads 1)")
    p.set_defaults(func=_run_profile)


def _run_profile(args: argparse.Namespace) -> int:
    _quiet_transformers(args.verbose)
    from pathlib import Path

    from dream_s_edge.profiling import ProfileConfig, run_profile
    from search.latency import format_check

    config = ProfileConfig(artifacts=Path(args.artifacts), out=Path(args.out), backend=args.backend,
                           precision=args.precision, threads=args.threads, repeats=args.repeats,
                           variants=tuple(v for v in args.variants.split(",") if v), check=args.check,
                           clock=args.clock)
    summary = run_profile(config)
    print(f"{summary['table']} (plot {summary['plot']}); export {summary['export_s']} s, "
          f"measure {summary['measure_s']} s, total {summary['total_s']} s")
    print("per-block costs (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in summary["blocks"].items()))
    if "check" in summary:
        print(format_check(summary["check"]))
    return 0


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="choose the tree's node budget and depth from a latency table")
    p.add_argument("--table", required=True, help="latency table written by `dream-s-edge profile`")
    p.add_argument("--artifacts", required=True, help="the exported folder (its draft and limits)")
    p.add_argument("--accept", default=None, help="bench JSON with measured acceptance (default: a curve)")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None)
    p.add_argument("--precision", default=None)
    p.add_argument("--past", type=int, default=256, help="context length the steps are costed at")
    p.set_defaults(func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dream_s_edge.profiling import TuneConfig, run_tune

    result, alpha = run_tune(TuneConfig(table=Path(args.table), artifacts=Path(args.artifacts),
                                        accept=Path(args.accept) if args.accept else None, device=args.device,
                                        backend=args.backend, precision=args.precision, past=args.past))
    print(f"acceptance alpha {alpha:.3f}; {result.message}")
    if result.tree is not None:
        t = result.tree
        print(f"use: --tree dynamic --top-k {t.top_k} --depth {t.depth} --node-budget {t.node_budget}")
    return 0


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="choose a sub-network of a DREAM-S supernet and a tree for a device")
    p.add_argument("--table", required=True, help="latency table written by `dream-s-edge profile`")
    p.add_argument("--supernet", required=True, help="supernet folder (search.supernet.save_supernet)")
    p.add_argument("--out", required=True, help="folder for search.json, candidates.json and draft/")
    p.add_argument("--model", default="default", help="'default' (embedded SmolLM2 VLM) or a local HF model folder")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None)
    p.add_argument("--precision", default=None)
    p.add_argument("--prompts", type=int, default=8, help="calibration prompts the τ estimate replays")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens decoded per calibration prompt")
    p.add_argument("--max-context", type=int, default=1024)
    p.add_argument("--layers", default="1,2", help="decoder block counts to search")
    p.add_argument("--head-ratios", default="0.25,0.5,0.75,1.0", help="attention head keep ratios")
    p.add_argument("--ffn-ratios", default="0.5,1.0", help="FFN width fractions")
    p.add_argument("--injection-layers", type=int, default=5, help="the target's last N layers as candidates")
    p.add_argument("--keep-ratios", default="1.0", help="visual-token keep ratios")
    p.add_argument("--vocab-sizes", default="full", help="draft vocabulary sizes ('full' = the target's)")
    p.add_argument("--top-k", default="4", help="tree top-k values")
    p.add_argument("--depths", default="3,4,6", help="tree depths")
    p.add_argument("--node-budgets", default="8,16,32", help="tree node budgets")
    p.add_argument("--past", type=int, default=256, help="context length the steps are costed at")
    p.add_argument("--max-params", type=int, default=None, help="largest draft (trainable parameters)")
    p.add_argument("--max-step-ms", type=float, default=None, help="slowest predicted speculative step")
    p.set_defaults(func=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from pathlib import Path

    from search.run import SearchConfig, run_search

    _quiet_transformers(args.verbose)

    def numbers(text: str, kind):
        return tuple(None if v == "full" else kind(v) for v in text.split(",") if v)

    config = SearchConfig(
        table=Path(args.table), supernet=Path(args.supernet), out=Path(args.out), model=args.model,
        device=args.device, backend=args.backend, precision=args.precision, prompts=args.prompts,
        max_new_tokens=args.max_new_tokens, max_context=args.max_context, num_layers=numbers(args.layers, int),
        head_ratios=numbers(args.head_ratios, float), ffn_ratios=numbers(args.ffn_ratios, float),
        injection_layers=args.injection_layers, visual_keep_ratios=numbers(args.keep_ratios, float),
        draft_vocab_sizes=numbers(args.vocab_sizes, int), top_ks=numbers(args.top_k, int),
        depths=numbers(args.depths, int), node_budgets=numbers(args.node_budgets, int), past=args.past,
        max_params=args.max_params, max_step_ms=args.max_step_ms)
    result = run_search(config)
    t = result.tree
    print(f"chosen: {result.choice}")
    print(f"tree: --tree dynamic --top-k {t.top_k} --depth {t.depth} --node-budget {t.node_budget}")
    print(f"predicted: tau {result.tau:.2f}, step {result.step_ms:.1f} ms vs autoregressive {result.ar_ms:.1f} ms "
          f"-> {result.predicted_speedup:.2f}x; {result.params} draft parameters")
    print(f"wrote {config.out / 'search.json'} and the draft folder {config.out / 'draft'}")
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
    _add_distill_data(sub)
    _add_train(sub)
    _add_bench(sub)
    _add_export(sub)
    _add_ask(sub)
    _add_build_engines(sub)
    _add_profile(sub)
    _add_tune(sub)
    _add_search(sub)
    _add_camera(sub)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )


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
