"""The DREAM draft: its spec (search space), the model, visual token compression and checkpoints.

`spec.py` (DraftSpec, TargetDims) -> `model.py` (DreamDraft over `blocks.py`, `cross_attention.py`,
`masks.py`) -> `runners/draft_torch.py` drives it with preallocated caches. `vtc.py` picks the
prompt positions the draft reads; `checkpoint.py` saves and loads the draft's own weights.
"""

from dream_s_edge.draft.checkpoint import load_draft, save_draft
from dream_s_edge.draft.model import DraftOutput, DreamDraft, build_vocab_map
from dream_s_edge.draft.spec import DraftSpec, DraftSpecError, TargetDims, check_target
from dream_s_edge.draft.vtc import select_kept

__all__ = [
    "DraftOutput",
    "DraftSpec",
    "DraftSpecError",
    "DreamDraft",
    "TargetDims",
    "build_vocab_map",
    "check_target",
    "load_draft",
    "save_draft",
    "select_kept",
]
