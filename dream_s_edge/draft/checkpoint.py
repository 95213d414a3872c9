"""Saving and loading a draft: `model.safetensors` + `config.json` in one folder.

The shared, frozen target weights (token embedding, LM head) are not saved; `config.json` records
the target dimensions they must have, and `load_draft` takes them from the loaded target.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dream_s_edge.default_draft import TOKEN_COUNTS_FILE
from dream_s_edge.draft.model import DreamDraft
from dream_s_edge.draft.spec import DraftSpec
from runtime.errors import ModelLoadError, SpecMismatchError, UserInputError

logger = logging.getLogger(__name__)

FORMAT = "dream-s-edge-draft"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_draft(path_dir, model: DreamDraft, spec: DraftSpec, target_name: str | None = None) -> Path:
    """Writes the draft's own weights and its spec.

    Args:
        path_dir: folder to write (created if missing).
        model: the draft; its shared embedding / LM head are left out.
        spec: the draft's spec; must equal `model.spec`.
        target_name: optional name of the target the draft belongs to (recorded, not checked).

    Returns:
        The folder.
    """
    if spec != model.spec:
        raise SpecMismatchError("save_draft got a spec that is not the model's.", f"{spec} != {model.spec}")
    folder = Path(path_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "draft_spec": spec.to_dict(),
        "target": {
            "name": target_name,
            "hidden_size": spec.target_hidden_size,
            "vocab_size": spec.target_vocab_size,
            "num_layers": spec.target_num_layers,
            "note": "token embedding and LM head are shared with this target and not saved here",
        },
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    logger.info("saved draft (%d tensors) to %s", len(state), folder)
    return folder


def load_draft(path_dir, target_embed: torch.Tensor, target_lm_head: torch.Tensor) -> DreamDraft:
    """Loads a draft saved by `save_draft` over the target's shared weights.

    Args:
        path_dir: folder holding `config.json` and `model.safetensors`.
        target_embed: [V, H_t] the target's token embedding.
        target_lm_head: [V, H_t] the target's LM head.

    Returns:
        The draft, in the dtype and on the device of `target_embed`; its spec is `model.spec`.

    Raises:
        ModelLoadError: missing or unreadable files, unknown format.
        SpecMismatchError: the shared weights do not fit the draft's target.
    """
    folder = Path(path_dir)
    config = _read_config(folder)
    spec = DraftSpec.from_dict(config["draft_spec"])
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"No {WEIGHTS_FILE} in the draft folder.", f"folder={folder}")
    state = load_file(str(weights))
    model = DreamDraft(spec, target_embed, target_lm_head, d2t=state.get("d2t"))
    model.to(device=target_embed.device, dtype=target_embed.dtype)
    model.load_state_dict(state, strict=True)
    return model


def saved_vocab_map(path_dir) -> torch.Tensor | None:
    """The d2t vocabulary map [V_d] int64 of a draft saved by `save_draft` (None: full vocabulary),
    read without building the draft.

    Raises:
        ModelLoadError: the folder has no weights file.
    """
    weights = Path(path_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"No {WEIGHTS_FILE} in the draft folder.", f"folder={path_dir}")
    with safe_open(str(weights), framework="pt") as f:
        return f.get_tensor("d2t").long() if "d2t" in set(f.keys()) else None


WEIGHT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def convert_draft(src_dir, dst_dir, dtype: str = "float16") -> Path:
    """Copies a draft folder with its floating-point weights stored in `dtype` (to ship it smaller).

    Integer tensors (the d2t vocabulary map) are kept as they are, and so is the folder's
    `token_counts.npy` when it has one. `load_draft` casts the weights back
    to the target's dtype, so a converted draft runs like the original up to the rounding of its weights.

    Args:
        src_dir: a folder written by `save_draft`.
        dst_dir: where to write (created; must not be `src_dir`).
        dtype: "float16", "bfloat16" or "float32".

    Returns:
        The written folder; its config.json records `weights_dtype`.

    Raises:
        ModelLoadError: `src_dir` is not a draft folder.
        UserInputError: an unknown dtype, or `dst_dir` is the source.
    """
    if dtype not in WEIGHT_DTYPES:
        raise UserInputError(f"Unknown weight dtype {dtype!r}.", hint=f"use one of {sorted(WEIGHT_DTYPES)}")
    src, dst = Path(src_dir), Path(dst_dir)
    if dst.resolve() == src.resolve():
        raise UserInputError("The converted draft would overwrite its source.", hint="pass another --out folder")
    config = _read_config(src)
    weights = src / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"No {WEIGHTS_FILE} in the draft folder.", f"folder={src}")
    target = WEIGHT_DTYPES[dtype]
    state = {name: t.to(target) if t.is_floating_point() else t for name, t in load_file(str(weights)).items()}
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst / WEIGHTS_FILE), metadata={"format": FORMAT})
    config["weights_dtype"] = dtype
    (dst / CONFIG_FILE).write_text(json.dumps(home_relative(config), indent=2) + "\n")
    if (src / TOKEN_COUNTS_FILE).is_file():  # the answer-token counts `export --draft-vocab` ranks by
        shutil.copyfile(src / TOKEN_COUNTS_FILE, dst / TOKEN_COUNTS_FILE)
    logger.info("wrote %s draft (%.1f MB) to %s", dtype, (dst / WEIGHTS_FILE).stat().st_size / 1e6, dst)
    return dst


def home_relative(value):
    """A JSON value with every string path under the user's home written as "~/...": a shipped
    draft's provenance names its run folders without the machine's home directory."""
    if isinstance(value, dict):
        return {k: home_relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [home_relative(v) for v in value]
    if not isinstance(value, str):
        return value
    home = str(Path.home())
    if "," in value:  # several data folders, as `train --data A,B` takes them
        return ",".join(home_relative(part) for part in value.split(","))
    if home != "/" and (value == home or value.startswith(home + "/")):
        return "~" + value[len(home):]
    return value


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(f"No {CONFIG_FILE} in the draft folder.", f"folder={folder}",
                             "save drafts with save_draft")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON.", str(e)) from e
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            "Unknown draft checkpoint format.",
            f"format={config.get('format')!r} version={config.get('format_version')!r}, "
            f"expected {FORMAT!r} version {FORMAT_VERSION}",
        )
    if "draft_spec" not in config:
        raise ModelLoadError(f"{path} has no 'draft_spec' field.")
    return config
