"""`dream-s-edge` profile, tune and search: latency tables, the tree tuner and the DREAM-S search.

Every heavy import sits inside a function, so building the parser stays torch-free.
"""

from __future__ import annotations

import argparse

from dream_s_edge.commands.common import quiet_transformers


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this group's subcommands."""
    _add_profile(sub)
    _add_tune(sub)
    _add_search(sub)
    _add_tau_check(sub)
    _add_flat_table(sub)


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
    p.add_argument("--layer-runs", type=int, default=5,
                   help="trt: profiled runs per stage for per-layer times (TensorRT IProfiler; 0: none)")
    p.set_defaults(func=_run_profile)


def _run_profile(args: argparse.Namespace) -> int:
    quiet_transformers(args.verbose)
    from pathlib import Path

    from dream_s_edge.profiling import ProfileConfig, run_profile
    from search.latency import format_check

    config = ProfileConfig(artifacts=Path(args.artifacts), out=Path(args.out), backend=args.backend,
                           precision=args.precision, threads=args.threads, repeats=args.repeats,
                           variants=tuple(v for v in args.variants.split(",") if v), check=args.check,
                           clock=args.clock, layer_runs=args.layer_runs)
    summary = run_profile(config)
    print(f"{summary['table']} (plot {summary['plot']}); export {summary['export_s']} s, "
          f"measure {summary['measure_s']} s, total {summary['total_s']} s")
    print("per-block costs (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in summary["blocks"].items()))
    if summary["layers"]:
        from search.layer_profile import slowest_layers

        for stage, row in summary["layers"].items():
            top = ", ".join(f"{layer} {ms:.3f}" for _, layer, ms in slowest_layers(row))
            print(f"layers of {stage} {row['shape']}: {row['total_ms']:.2f} ms in engines; slowest: {top}")
    if "check" in summary:
        print(format_check(summary["check"]))
    return 0


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="choose the tree's node budget, depth and pruning from a latency table")
    p.add_argument("--table", required=True, help="latency table written by `dream-s-edge profile`")
    p.add_argument("--artifacts", required=True, help="the exported folder (its draft and limits)")
    p.add_argument("--accept", default=None, help="bench JSON with measured acceptance (default: a curve)")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None)
    p.add_argument("--precision", default=None)
    p.add_argument("--past", type=int, default=256, help="context length the steps are costed at")
    p.add_argument("--measure", action="store_true",
                   help="also decode --prompts with the tuned setting and the default tree side by side "
                        "(onnxruntime CPU) and print the measured tokens/s and speedups as JSON")
    p.add_argument("--prompts", help="--measure: JSON lines of {\"image\": path or null, \"question\": str}")
    p.add_argument("--json", help="--measure: also write the full report (per-prompt rows included) here")
    p.add_argument("--baseline", default="manifest",
                   help="--measure: the default tree, 'manifest' (the folder's exported tree) or a preset name")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="--measure: onnxruntime intra-op threads")
    p.add_argument("--limit", type=int, default=None, help="--measure: only the first N prompts")
    p.set_defaults(func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dream_s_edge.profiling import TuneConfig, run_tune

    config = TuneConfig(table=Path(args.table), artifacts=Path(args.artifacts),
                        accept=Path(args.accept) if args.accept else None, device=args.device,
                        backend=args.backend, precision=args.precision, past=args.past)
    if args.measure:
        return _measure_tune(args, config)
    result, alpha = run_tune(config)
    print(f"acceptance alpha {alpha:.3f}; {result.message}")
    if result.tree is not None:
        t = result.tree
        print(f"use: --tree dynamic --top-k {t.top_k} --depth {t.depth} --node-budget {t.node_budget} "
              f"--min-prob {t.min_prob:g}")
    return 0


def _measure_tune(args: argparse.Namespace, config) -> int:
    """`tune --measure`: the JSON report (without per-prompt rows) on stdout, a readable table on stderr."""
    import json
    import sys
    from pathlib import Path

    from dream_s_edge.bench.tuned import TuneMeasureConfig, measure_tuned, summary_lines
    from runtime.errors import UserInputError

    if not args.prompts:
        raise UserInputError("tune --measure needs prompts to decode.",
                             hint='pass --prompts FILE.jsonl, one {"image": path or null, "question": str} per line')
    report = measure_tuned(TuneMeasureConfig(
        tune=config, prompts=Path(args.prompts), json_out=Path(args.json) if args.json else None,
        baseline=args.baseline, max_new_tokens=args.max_new_tokens, threads=args.threads, limit=args.limit))
    sys.stderr.write(report["tuner"]["message"] + "\n" + "\n".join(summary_lines(report)) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "per_prompt"}, indent=1))
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
    p.add_argument("--prompts", default=None,
                   help="N (an integer): calibration prompts the τ estimate replays (default 8); "
                        "FILE.jsonl: the prompts --confirm decodes")
    p.add_argument("--calibration-prompts", type=int, default=None, help="calibration prompts (same as --prompts N)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens decoded per calibration prompt")
    p.add_argument("--max-context", type=int, default=1024)
    _add_grid_flags(p)
    p.add_argument("--top-k", default="4", help="tree top-k values")
    p.add_argument("--depths", default="3,4,6", help="tree depths")
    p.add_argument("--node-budgets", default="8,16,32", help="tree node budgets")
    p.add_argument("--past", type=int, default=256, help="context length the steps are costed at")
    p.add_argument("--max-params", type=int, default=None, help="largest draft (trainable parameters)")
    p.add_argument("--max-step-ms", type=float, default=None, help="slowest predicted speculative step")
    _add_compare_flags(p)
    _add_confirm_flags(p)
    p.set_defaults(func=_run_search)


def _add_compare_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("a second device, side by side (OUT/compare.json, OUT/compare.png)")
    g.add_argument("--compare-table", default=None,
                   help="another latency table (or the same file with other key flags), searched with the same τ̂")
    g.add_argument("--compare-device", default=None, help="entry key of --compare-table")
    g.add_argument("--compare-backend", default=None)
    g.add_argument("--compare-precision", default=None)


def _add_confirm_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("confirm the top candidates by real runs (OUT/confirm.json; an ort-cpu --table)")
    g.add_argument("--confirm", type=int, default=0, metavar="K",
                   help="decode --prompts FILE.jsonl with the top K candidates and autoregressively, on onnxruntime CPU")
    g.add_argument("--artifacts", default=None,
                   help="--confirm: folder of `dream-s-edge export` (its target is reused; drafts go to DIR/variants/)")
    g.add_argument("--baseline", default="eagle2",
                   help="--confirm: tree preset of the hand-set baseline, the largest sub-network ('none': no baseline)")
    g.add_argument("--confirm-max-new-tokens", type=int, default=64, help="--confirm: tokens decoded per prompt")
    g.add_argument("--threads", type=int, default=None, help="--confirm: onnxruntime intra-op threads")


def _add_grid_flags(p: argparse.ArgumentParser) -> None:
    """The sub-network grid's flags (SearchSpace fields), comma-separated lists; each defaults to the
    space the supernet was trained over (`train --supernet` records it), see search.run.resolve_space."""
    g = p.add_argument_group("sub-network grid (default: the supernet's training space)")
    g.add_argument("--layers", default="", help="decoder block counts, e.g. 1,2")
    g.add_argument("--head-ratios", default="", help="attention head keep ratios (whole KV groups), e.g. 0.5,1.0")
    g.add_argument("--ffn-ratios", default="", help="FFN width fractions, e.g. 0.5,1.0")
    g.add_argument("--injection-layers", type=int, default=None, help="the target's last N layers as candidates")
    g.add_argument("--keep-ratios", default="", help="visual-token keep ratios, e.g. 0.5,1.0")
    g.add_argument("--vocab-sizes", default="", help="draft vocabulary sizes ('full' = the target's)")


def numbers(text: str, kind) -> tuple:
    """A comma-separated flag as a tuple ('full' -> None)."""
    return tuple(None if v == "full" else kind(v) for v in text.split(",") if v)


def _prompt_flags(args: argparse.Namespace) -> tuple[int, str | None]:
    """(calibration prompts, confirm prompts file) from --prompts N|FILE and --calibration-prompts."""
    count, path = 8, None
    if args.prompts is not None:
        if args.prompts.isdigit():
            count = int(args.prompts)
        else:
            path = args.prompts
    if args.calibration_prompts is not None:
        count = args.calibration_prompts
    return count, path


def _search_extras(args: argparse.Namespace, prompts_file: str | None) -> dict:
    """The compare and confirm parts of a SearchConfig from their flags."""
    from pathlib import Path

    from runtime.errors import UserInputError
    from search.compare import TableSelection
    from search.confirm import ConfirmConfig

    compare = confirm = None
    if args.compare_table:
        compare = TableSelection(Path(args.compare_table), args.compare_device, args.compare_backend,
                                 args.compare_precision)
    if args.confirm:
        if not prompts_file or not args.artifacts:
            raise UserInputError("search --confirm needs prompts to decode and an exported target.",
                                 note=f"--prompts {args.prompts}, --artifacts {args.artifacts}",
                                 hint="pass --prompts FILE.jsonl --artifacts DIR (written by `dream-s-edge export`)")
        confirm = ConfirmConfig(top=args.confirm, prompts=Path(prompts_file), artifacts=Path(args.artifacts),
                                baseline=args.baseline, max_new_tokens=args.confirm_max_new_tokens,
                                threads=args.threads)
    return {"compare": compare, "confirm": confirm}


def _run_search(args: argparse.Namespace) -> int:
    from pathlib import Path

    from search.run import SearchConfig, run_search_outcome

    quiet_transformers(args.verbose)
    calibration, prompts_file = _prompt_flags(args)
    config = SearchConfig(
        table=Path(args.table), supernet=Path(args.supernet), out=Path(args.out), model=args.model,
        device=args.device, backend=args.backend, precision=args.precision, prompts=calibration,
        max_new_tokens=args.max_new_tokens, max_context=args.max_context, num_layers=numbers(args.layers, int),
        head_ratios=numbers(args.head_ratios, float), ffn_ratios=numbers(args.ffn_ratios, float),
        injection_layers=args.injection_layers, visual_keep_ratios=numbers(args.keep_ratios, float),
        draft_vocab_sizes=numbers(args.vocab_sizes, int), top_ks=numbers(args.top_k, int),
        depths=numbers(args.depths, int), node_budgets=numbers(args.node_budgets, int), past=args.past,
        max_params=args.max_params, max_step_ms=args.max_step_ms, **_search_extras(args, prompts_file))
    outcome = run_search_outcome(config)
    result = outcome.result
    t = result.tree
    print(f"chosen: {result.choice}")
    print(f"tree: --tree dynamic --top-k {t.top_k} --depth {t.depth} --node-budget {t.node_budget}")
    print(f"predicted: tau {result.tau:.2f}, step {result.step_ms:.1f} ms vs autoregressive {result.ar_ms:.1f} ms "
          f"-> {result.predicted_speedup:.2f}x; {result.params} draft parameters")
    print(f"wrote {config.out / 'search.json'} and the draft folder {config.out / 'draft'}")
    if outcome.compare is not None:
        from search.compare import format_compare

        print("\n".join(format_compare(outcome.compare)))
        print(f"wrote {config.out / 'compare.json'} and {config.out / 'compare.png'}")
    if outcome.confirm is not None:
        from search.confirm import format_confirm

        print("\n".join(format_confirm(outcome.confirm)))
        print(f"wrote {config.out / 'confirm.json'}")
    return 0


def _add_tau_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tau-check", help="rank correlation of the cheap tau estimate with tau of the real loop, "
                                         "over sub-networks of a supernet")
    p.add_argument("--supernet", required=True, help="supernet folder (`train --supernet` writes RUN/supernet)")
    p.add_argument("--out", required=True, help="report JSON (a scatter plot is written beside it)")
    p.add_argument("--model", default="default", help="'default' (embedded SmolLM2 VLM) or a local HF model folder")
    p.add_argument("--subnets", type=int, default=12, help="sub-networks: largest, smallest, then random draws")
    p.add_argument("--prompts", type=int, default=8, help="calibration prompts the tau estimate replays")
    p.add_argument("--measure-prompts", type=int, default=8,
                   help="held-out prompts the real loop runs on (disjoint from the calibration ones)")
    p.add_argument("--same-prompts", action="store_true", help="run the real loop on the calibration prompts")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-context", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--node-budget", type=int, default=16)
    p.add_argument("--interactions", default="", help="branches (default: the supernet's training space)")
    _add_grid_flags(p)
    p.set_defaults(func=_run_tau_check)


def _run_tau_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from search.correlate import TauCheckConfig, format_correlation, run_tau_check

    quiet_transformers(args.verbose)
    config = TauCheckConfig(
        supernet=Path(args.supernet), out=Path(args.out), model=args.model, subnets=args.subnets,
        prompts=args.prompts, measure_prompts=args.measure_prompts, same_prompts=args.same_prompts,
        max_new_tokens=args.max_new_tokens, max_context=args.max_context, seed=args.seed, top_k=args.top_k,
        depth=args.depth, node_budget=args.node_budget, num_layers=numbers(args.layers, int),
        head_ratios=numbers(args.head_ratios, float), ffn_ratios=numbers(args.ffn_ratios, float),
        injection_layers=args.injection_layers, visual_keep_ratios=numbers(args.keep_ratios, float),
        draft_vocab_sizes=numbers(args.vocab_sizes, int), interactions=numbers(args.interactions, str))
    report = run_tau_check(config)
    print(f"{len(report['subnets'])} sub-networks: Spearman {format_correlation(report['spearman'])}, Kendall "
          f"{format_correlation(report['kendall'])} ({report['method']}); tau_hat {report['seconds']['estimate']:.1f} s vs real loop "
          f"{report['seconds']['measure']:.1f} s -> {args.out}")
    return 0


def _add_flat_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flat-verify-table", help="derive a what-if latency table whose verify cost is flat in the "
                                                 "node count (a large GPU's shape) from a measured one")
    p.add_argument("--table", required=True, help="measured latency table")
    p.add_argument("--out", required=True, help="table to write (merged into when it exists)")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None)
    p.add_argument("--precision", default=None)
    p.set_defaults(func=_run_flat_table)


def _run_flat_table(args: argparse.Namespace) -> int:
    from search.latency_table import flat_verify_entry, load_table, new_table, save_table, select_entry

    entry = select_entry(load_table(args.table), device=args.device, backend=args.backend, precision=args.precision)
    flat = flat_verify_entry(entry)
    path = save_table(new_table([flat]), args.out)
    print(f"{path}: {flat['key']['device']} / {flat['key']['backend']} (derived, not measured)")
    return 0
