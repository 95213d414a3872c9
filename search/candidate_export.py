"""Trained sub-network drafts exported over an existing artifact folder (the target is not re-exported).

Place in the data flow: `search --confirm` extracts a sub-network's real weights from the supernet
(`search.supernet.build_subnet`) -> `export_trained_variant` writes that draft's graphs and tables
(`export.draft_export.export_draft`, parity checked) into `DIR/variants/<name>/`, the layout and
`variant.json` stamp of the profile's random-weight variants (`export/draft_variants.py`) -> the
same module's `variant_manifest` returns the in-memory `Manifest` that pairs DIR's target files with
this draft, which `runtime.ort_draft.OrtDraftRunner` reads. DIR's own manifest is never rewritten.

The variant's name is a digest of its DraftSpec, tree and weights, so a second `--confirm` over
the same supernet reuses the export, and two different drafts never share a folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

from runtime.errors import SpecMismatchError
from runtime.manifest import Manifest
from runtime.tree import TreeSpec

logger = logging.getLogger(__name__)

PREFIX = "search-"  # variant folders written here (the profile's are named after VARIANTS)


def variant_name(model, tree: TreeSpec) -> str:
    """`search-` + 12 hex digits of sha256 over the spec, the tree and every tensor of the draft."""
    from search.search import tree_to_dict

    digest = hashlib.sha256(json.dumps([model.spec.to_dict(), tree_to_dict(tree)], sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return PREFIX + digest.hexdigest()[:12]


def check_fits_folder(base: Manifest, spec) -> None:
    """Refuses a draft built for another target than the folder's.

    Raises:
        SpecMismatchError: hidden size, vocabulary or layer count differ from the folder's target.
    """
    target = base["target"]
    pairs = [("hidden_size", spec.target_hidden_size, int(target["hidden_size"])),
             ("vocab_size", spec.target_vocab_size, int(target["vocab_size"])),
             ("num_layers", spec.target_num_layers, int(target["num_layers"]))]
    for name, draft_value, folder_value in pairs:
        if draft_value != folder_value:
            raise SpecMismatchError(f"The supernet was built for another target than the one in {base.folder}.",
                                    f"draft target {name}={draft_value}, folder target {name}={folder_value}",
                                    "pass --artifacts of the target the supernet was trained for (and --model)")


def export_trained_variant(base: Manifest, model, tree: TreeSpec, parity: bool = True) -> Manifest:
    """Exports a given (trained) draft over the base folder's target; returns the combined Manifest.

    Args:
        base: the artifact folder's manifest (`dream-s-edge export` output; its target is reused).
        model: the DreamDraft to export (e.g. `build_subnet(supernet, choice)`), float32 on the CPU.
        tree: the tree it will decode with: fixes the step graph's top-k, the scratch slots and depth.
        parity: check both draft graphs against PyTorch (an ExportError when they differ).

    Returns:
        The Manifest with the base folder's target files and this draft's files (not written to disk).

    Raises:
        SpecMismatchError: the draft was built for another target.
        ExportError: a failed export or parity check.
    """
    from export.draft_export import export_draft
    from export.draft_variants import variant_manifest
    from export.pipeline import Artifacts

    check_fits_folder(base, model.spec)
    model = model.float().eval()
    out = base.folder / "variants" / variant_name(model, tree)
    if not (out / "variant.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        arts = Artifacts()
        export_draft(model, out, arts, SimpleNamespace(tree=tree, parity=parity, draft_weights="float32"))
        _write_stamp(out, model, tree, arts)
        logger.info("exported trained draft %s into %s", out.name, out)
    return variant_manifest(base, out)


def _write_stamp(out: Path, model, tree: TreeSpec, arts) -> None:
    """variant.json: what `variant_manifest` reads, plus the tree and the parity reports."""
    from search.search import tree_to_dict

    stamp = {"spec": model.spec.to_dict(), "tree": tree_to_dict(tree), "trained": True, "files": arts.files,
             "io_contract": arts.io_contract, "draft": arts.sections["draft"], "parity": arts.parity}
    (out / "variant.json").write_text(json.dumps(stamp) + "\n")
