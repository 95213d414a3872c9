"""Random-weight draft exports over a base artifact folder, one per architectural choice (latency only).

Place in the data flow: `dream-s-edge profile` asks for the draft choices of the DREAM-S search
space (`VARIANTS`: layers, width, heads, interaction, draft vocabulary) -> `export_variant` writes
`draft_step.onnx` / `draft_memory.onnx` / tables of a random draft with that `DraftSpec` into
`DIR/variants/<name>/` -> `variant_manifest` returns an in-memory `Manifest` whose target files are
the base folder's and whose draft files are the variant's. Weights are random: only latency is
measured on them. Nothing here is written into the base folder's manifest.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from runtime.manifest import MANIFEST_NAME, Manifest
from runtime.session import tree_from_manifest

logger = logging.getLogger(__name__)

# name -> DraftSpec overrides of the base (dream-default: 2 blocks at the target width, cross-attention)
VARIANTS: dict[str, dict] = {
    "base": {},
    "layers1": {"num_layers": 1},
    "layers3": {"num_layers": 3},
    "width384": {"hidden_size": 384},
    "width384_layers1": {"hidden_size": 384, "num_layers": 1},
    "width768": {"hidden_size": 768},
    "width768_layers1": {"hidden_size": 768, "num_layers": 1},
    "heads3": {"num_heads": 3},
    "concat": {"interaction": "concat"},
    "none": {"interaction": "none"},
    "vocab8192": {"draft_vocab_size": 8192},
}


def variant_spec(base_spec: dict, overrides: dict):
    """A DraftSpec: the base spec with `overrides`; width changes re-derive heads (64-wide) and FFN."""
    from dream_s_edge.draft.spec import DraftSpec

    values = {**base_spec, **overrides}
    values["feature_layers"] = tuple(values["feature_layers"])
    if "hidden_size" in overrides:
        values["ffn_size"] = 0
        if "num_heads" not in overrides:
            values["num_heads"] = overrides["hidden_size"] // 64
    values["cross_attention_position"] = min(values["cross_attention_position"], values["num_layers"] - 1)
    values["early_feature_block"] = min(values["early_feature_block"], values["num_layers"] - 1)
    if values["num_heads"] % values["num_kv_heads"]:
        values["num_kv_heads"] = 1
    return DraftSpec(**values)


def export_variant(base: Manifest, name: str, spec, seed: int = 0) -> Path:
    """Exports a random draft with `spec` into base.folder/variants/<name>; returns that folder.

    Skips the export when the folder already holds one for the same spec.
    """
    import torch

    from dream_s_edge.draft.model import DreamDraft
    from export.draft_export import export_draft
    from export.pipeline import Artifacts

    out = base.folder / "variants" / name
    stamp = out / "variant.json"
    if stamp.is_file() and json.loads(stamp.read_text())["spec"] == spec.to_dict():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    table = torch.from_numpy(np.load(base.path("embeddings"))).float()  # [V, H_t], also the LM head here
    d2t = None
    if spec.draft_vocab_size:
        d2t = torch.sort(torch.randperm(spec.target_vocab_size)[: spec.draft_vocab_size]).values
    model = DreamDraft(spec, table, table, d2t).float().eval()
    for p in model.parameters():  # open the gates, so cross-attention is not skipped as a no-op
        if p.ndim == 0:
            p.data.fill_(0.5)
    arts = Artifacts()
    config = SimpleNamespace(tree=tree_from_manifest(base["tree"]), parity=False, draft_weights="float32")
    export_draft(model, out, arts, config)
    stamp.write_text(json.dumps({"spec": spec.to_dict(), "files": arts.files, "io_contract": arts.io_contract,
                                 "draft": arts.sections["draft"]}) + "\n")
    logger.info("exported draft variant %s", name)
    return out


def variant_manifest(base: Manifest, folder: Path) -> Manifest:
    """The base manifest with the variant's draft files, contracts and draft section (not on disk)."""
    stamp = json.loads((folder / "variant.json").read_text())
    data = json.loads(json.dumps(base.data))
    files = {k: v for k, v in data["files"].items() if not k.startswith("draft_")}
    for key, rel in stamp["files"].items():
        files[key] = {"path": str(Path("variants") / folder.name / rel), "sha256": "", "bytes": 0}
    data["files"] = files
    data["io_contract"] = {k: v for k, v in data["io_contract"].items() if not k.startswith("draft_")}
    data["io_contract"].update(stamp["io_contract"])
    data["draft"] = stamp["draft"]
    return Manifest(base.folder, data)


def base_manifest(folder: str | Path) -> Manifest:
    """The artifact folder's manifest (checksums verified once)."""
    manifest = Manifest.load(folder)
    if not manifest.has("draft_step"):
        from runtime.errors import ManifestError

        raise ManifestError(f"{Path(folder) / MANIFEST_NAME} has no draft.",
                            hint="export with a draft: dream-s-edge export --out DIR --draft untrained")
    return manifest
