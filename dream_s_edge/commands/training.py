"""`dream-s-edge` distill-data, train and bench: distilling DREAM drafts and measuring them.

Every heavy import sits inside a function, so building the parser stays torch-free.
"""

from __future__ import annotations

import argparse

from dream_s_edge.commands.common import quiet_transformers, set_threads


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this group's subcommands."""
    _add_distill_data(sub)
    _add_train(sub)
    _add_bench(sub)
    _add_bench_prompts(sub)
    _add_draft_convert(sub)
    _add_draft_counts(sub)


def _int_list(text: str) -> tuple[int, ...]:
    """"15,30" -> (15, 30), for argparse."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


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
    p.add_argument("--generate-batch", type=int, default=1,
                   help="answers generated together with HF generate (8-16: several times faster on a CPU)")
    p.add_argument("--extra-layers", default="",
                   help="more target hidden states to store, comma-separated HF indices (the injection-layer "
                        "candidates of `train --supernet`, e.g. the last 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=_run_distill_data)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="distil a DREAM draft (one process, or several under torchrun)")
    p.add_argument("--data", required=True,
                   help="folder written by distill-data, or several separated by commas (e.g. runs with other --seed)")
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
    p.add_argument(
        "--draft-vocab",
        type=int,
        default=None,
        help="reduce the draft's vocabulary to the N most frequent answer tokens of the data (EAGLE-3 d2t)",
    )
    p.add_argument("--interaction", choices=["cross_attention", "concat", "none"], default=None,
                   help="override the preset's draft interaction (concat: EAGLE-style fc(concat(emb, f)))")
    p.add_argument("--feature-layers", type=_int_list, default=None, metavar="A,B",
                   help="override the target layers the draft reads (HF indices, the last = the post-norm "
                        "output), e.g. 15,30; the data must hold them (distill-data --extra-layers)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--grad-accum", type=int, default=1, help="sequences per step and process")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--feat-weight", type=float, default=0.2)
    p.add_argument("--intermed-weight", type=float, default=0.2)
    p.add_argument("--intermed-source", choices=["entropy", "last"], default="entropy",
                   help="the early draft block's target: the entropy-selected layer (DREAM) or the last layer")
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
    p.add_argument("--init-from", default=None, metavar="DRAFT",
                   help="warm start: a trained draft folder of the same architecture whose weights and "
                        "vocabulary map begin the run (fresh optimizer and learning-rate schedule); "
                        "the data may be another --seed's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    _add_supernet_flags(p)
    p.set_defaults(func=_run_train)


# (flag, SupernetOptions field, parser of the value); every one needs --supernet.
_SUPERNET_FLAGS = (
    ("--phase1-steps", "phase1_steps", int, "N1: steps that train only the largest network (default 200)"),
    ("--random-subnets", "random_subnets", int, "random sub-networks per phase-2 step (default 1)"),
    ("--kd-weight", "kd_weight", float, "weight of the KL to the largest network's logits (default 1.0)"),
    ("--importance", "importance", str, "head/channel ranking at the phase switch: taylor (default) or weight"),
    ("--interactions", "interactions", str, "branches, e.g. cross_attention,concat (default cross_attention)"),
    ("--layers", "num_layers", int, "decoder block counts (default 1 .. the preset's depth)"),
    ("--head-ratios", "head_ratios", float, "head keep ratios (default k/num_kv_heads, k = 1 .. num_kv_heads)"),
    ("--ffn-ratios", "ffn_ratios", float, "FFN width fractions (default 0.5,1.0)"),
    ("--injection-layers", "injection_layers", int,
     "the target's last N hidden states as injection candidates, those the data stores (default 5)"),
    ("--keep-ratios", "visual_keep_ratios", float, "visual-token keep ratios (default the preset's and 1.0)"),
    ("--vocab-sizes", "draft_vocab_sizes", int, "draft vocabulary sizes, 'full' = the target's (default full)"),
)
_SCALAR_FIELDS = ("phase1_steps", "random_subnets", "kd_weight", "importance", "injection_layers")


def _add_supernet_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DREAM-S supernet (--supernet; writes RUN/supernet for `dream-s-edge search`)")
    g.add_argument("--supernet", action="store_true",
                   help="train a weight-sharing supernet: phase 1 the largest network, then the sandwich rule")
    for flag, field, kind, text in _SUPERNET_FLAGS:
        scalar = field in _SCALAR_FIELDS
        metavar = ({int: "N", float: "X", str: "NAME"}[kind]) if scalar else "A,B,..."
        g.add_argument(flag, dest=field, default=None, type=kind if scalar else str, metavar=metavar, help=text)


def _supernet_options(args: argparse.Namespace):
    """SupernetOptions from the flags (None without --supernet, which the flags need)."""
    given = [(flag, field, kind) for flag, field, kind, _ in _SUPERNET_FLAGS if getattr(args, field) is not None]
    if not args.supernet:
        if given:
            from runtime.errors import UserInputError

            raise UserInputError(f"{given[0][0]} needs --supernet.", hint="add --supernet to train a DREAM-S supernet")
        return None
    from search.supernet_train import SupernetOptions

    values = {}
    for _, field, kind in given:
        value = getattr(args, field)
        if field not in _SCALAR_FIELDS:
            value = tuple(None if v == "full" else kind(v) for v in value.split(",") if v)
        values[field] = value
    return SupernetOptions(**values)


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
    p.add_argument("--draft", default=None, help="torch: draft folder, 'untrained' or 'oracle' (default: the "
                                                 "shipped default draft with the default model, else untrained)")
    p.add_argument("--attention", choices=["eager", "sdpa"], default=None,
                   help="torch: the target's attention (default: eager when the draft prunes visual tokens)")
    p.add_argument("--ablate", nargs="+", default=None, metavar="NAME=DRAFT",
                   help="the same bench for each named draft (torch: draft folders; ort-*/trt: exported folders); "
                        "--json gets the combined report and its plot, each draft's report goes to OUT-runs/")
    p.add_argument("--table", default=None, help="with --ablate: markdown table to write, e.g. docs/ablations.md")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-context", type=int, default=1024, help="torch only (artifacts fix their own)")
    p.add_argument("--tree", choices=["dynamic", "static"], default=None,
                   help="default: dynamic (torch) or the artifacts' tree")
    p.add_argument("--top-k", type=int, default=None, help="default: 4 (torch) or the artifacts' tree")
    p.add_argument("--depth", type=int, default=None, help="default: 5 (torch) or the artifacts' tree")
    p.add_argument("--node-budget", type=int, default=None, help="default: 16 (torch) or the artifacts' tree")
    p.add_argument("--min-prob", type=float, default=None,
                   help="dynamic trees: leave out candidates below this cumulative draft probability, so verify "
                        "takes fewer nodes (default: 0, or the artifacts' tree)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch and onnxruntime (0: their defaults)")
    p.set_defaults(func=_run_bench)


def _add_bench_prompts(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-prompts", help="held-out prompts (test-split scenes, unseen photographs) as a "
                                             "bench file for `bench --prompts`")
    p.add_argument("--out", required=True, help="folder: NAME.jsonl and images/ are written into it")
    p.add_argument("--scenes", type=int, default=12, help="test-split scenes with their own short-answer questions")
    p.add_argument("--open-scenes", type=int, default=8, help="more test-split scenes asked open questions")
    p.add_argument("--photos", type=int, default=8, help="held-out photographs (chelsea, rocket) with open questions")
    p.add_argument("--name", default="heldout", help="file name stem")
    p.add_argument("--seed", type=int, default=0, help="the distillation data's seed (held-out prompts never "
                                                       "overlap its training prompts)")
    p.set_defaults(func=_run_bench_prompts)


def _run_bench_prompts(args: argparse.Namespace) -> int:
    from dream_s_edge.distill.prompts import heldout_prompts, write_prompt_file
    from runtime.errors import UserInputError

    counts = {"--scenes": args.scenes, "--open-scenes": args.open_scenes, "--photos": args.photos}
    negative = [flag for flag, value in counts.items() if value < 0]
    if negative or not sum(counts.values()):
        raise UserInputError(f"{negative[0] if negative else 'The counts'} must be non-negative and not all zero.",
                             hint="e.g. --scenes 12 --open-scenes 8 --photos 8")
    specs = heldout_prompts(args.scenes, args.photos, args.seed, num_open_scene=args.open_scenes)
    path = write_prompt_file(args.out, specs, args.name)
    print(f"{path}: {len(specs)} prompts ({args.scenes} scene QA, {args.open_scenes} open scene, "
          f"{args.photos} photo)")
    return 0


def _add_draft_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("draft-convert", help="copy a draft folder with its weights stored in float16 (to ship it)")
    p.add_argument("--draft", required=True, help="draft folder written by `train` (RUN/draft)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.set_defaults(func=_run_draft_convert)


def _run_draft_convert(args: argparse.Namespace) -> int:
    from dream_s_edge.draft.checkpoint import WEIGHTS_FILE, convert_draft

    folder = convert_draft(args.draft, args.out, args.dtype)
    print(f"{folder}: {args.dtype} weights, {(folder / WEIGHTS_FILE).stat().st_size / 1e6:.1f} MB")
    return 0


def _add_draft_counts(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("draft-counts", help="count the target's answer tokens over the training prompts into a "
                                            "draft folder (token_counts.npy, which export --draft-vocab ranks by)")
    p.add_argument("--draft", required=True, help="draft folder to write token_counts.npy into")
    p.add_argument("--artifacts", required=True, help="a `dream-s-edge export` folder of the draft's target")
    p.add_argument("--num-scene", type=int, default=330, help="scene prompts (the shipped draft's training mix)")
    p.add_argument("--num-photo", type=int, default=88, help="photograph prompts")
    p.add_argument("--num-text", type=int, default=174, help="text-only instruction prompts")
    p.add_argument("--seed", type=int, default=0, help="the training prompts' seed")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=_run_draft_counts)


def _run_draft_counts(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from dream_s_edge.distill.prompts import training_prompts
    from dream_s_edge.distill.recount import count_answer_tokens
    from dream_s_edge.draft.vocab_prune import save_token_counts
    from runtime.errors import UserInputError
    from runtime.manifest import Manifest

    config = Path(args.draft) / "config.json"
    if not config.is_file():
        raise UserInputError(f"No draft at {args.draft} (config.json is missing).", hint="pass a folder written by train")
    vocab = json.loads(config.read_text())["draft_spec"]["target_vocab_size"]
    target_vocab = Manifest.load(args.artifacts)["target"]["vocab_size"]
    if vocab != target_vocab:
        raise UserInputError("The artifacts hold another target than the draft was trained for.",
                             note=f"draft target vocabulary {vocab}, artifacts' {target_vocab}",
                             hint="export the draft's own target and pass that folder")
    specs = training_prompts(args.num_scene, args.num_photo, args.num_text, args.seed)
    counts = count_answer_tokens(args.artifacts, specs, args.max_new_tokens)
    path = save_token_counts(args.draft, counts)
    print(f"{path}: {int(counts.sum())} answer tokens, {int((counts > 0).sum())} distinct, {len(specs)} prompts")
    return 0


def _run_distill_data(args: argparse.Namespace) -> int:
    quiet_transformers(args.verbose)
    set_threads(args.threads)
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
        extra_layers=tuple(int(v) for v in args.extra_layers.split(",") if v),
        seed=args.seed,
        generate_batch=args.generate_batch,
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
    quiet_transformers(args.verbose)
    set_threads(args.threads)
    from dream_s_edge.distill import TrainConfig, train_draft

    config = TrainConfig(
        data_dir=args.data,
        out_dir=args.out,
        model=args.model,
        preset=args.preset,
        visual_keep_ratio=args.visual_keep_ratio,
        draft_vocab_size=args.draft_vocab,
        interaction=args.interaction,
        feature_layers=args.feature_layers,
        steps=args.steps,
        grad_accum=args.grad_accum,
        lr=args.lr,
        warmup=args.warmup,
        kl_weight=args.kl_weight,
        feat_weight=args.feat_weight,
        intermed_weight=args.intermed_weight,
        intermed_source=args.intermed_source,
        ttt_steps=args.ttt_steps,
        feature_noise=args.feature_noise,
        save_every=args.save_every,
        val_every=args.val_every,
        val_initial=args.val_initial,
        val_prompts=args.val_prompts,
        val_max_new_tokens=args.val_max_new_tokens,
        seed=args.seed,
        init_from=args.init_from,
        device=args.device,
        supernet=_supernet_options(args),
    )
    print(train_draft(config))
    return 0


def _run_ablation(args: argparse.Namespace, bench) -> int:
    from dream_s_edge.bench.ablate import AblationConfig, parse_entries, run_ablation
    from runtime.errors import UserInputError

    if not args.ablate:
        raise UserInputError("--table needs --ablate.", hint="add --ablate NAME=DRAFT_FOLDER ...")
    combined = run_ablation(AblationConfig(bench=bench, entries=parse_entries(args.ablate), table=args.table))
    for row in combined["rows"]:
        print(f"{row['name']}: tau {row['tau']:.2f}, AR {row['tokens_per_s']['autoregressive']:.1f} tok/s, "
              f"speculative {row['tokens_per_s']['speculative']:.1f} tok/s, speedup {row['speedup']:.2f}x, "
              f"identical {row['identical_prompts']}/{row['prompts']}")
    print(f"-> {args.json_out}" + (f" and {args.table}" if args.table else ""))
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    quiet_transformers(args.verbose)
    if args.backend == "torch" or args.hf:
        set_threads(args.threads)
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
        min_prob=args.min_prob,
        limit=args.limit,
        hf=args.hf,
        threads=args.threads,
        attention=args.attention,
    )
    if args.ablate or args.table:
        return _run_ablation(args, config)
    report = run_bench(config)
    hf = report["hf_generate"]
    versus = f", HF generate {hf['tokens_per_s']:.1f} tok/s (AR/HF {report['ar_vs_hf']:.2f}x)" if hf else ""
    print(
        f"tau {report['tau']['mean']:.2f}, AR {report['tokens_per_s']['autoregressive']:.1f} tok/s, "
        f"speculative {report['tokens_per_s']['speculative']:.1f} tok/s, speedup {report['speedup']:.2f}x "
        f"(decode {report['decode_speedup']:.2f}x){versus}, greedy identical: {report['greedy_identical']} "
        f"-> {args.json_out}"
    )
    limits = report["limits"]
    print(f"prefill is {limits['prefill_share']:.0%} of the speculative time; with a draft that cost nothing "
          f"the speedup would be {limits['zero_cost_draft_speedup']:.2f}x")
    return 0
