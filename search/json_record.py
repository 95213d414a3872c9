"""`JsonRecord`: save/load for the search's result records (a `to_dict` / `from_dict` pair as JSON).

Place in the data flow: `SearchResult` (search.json) and `CompareReport` (compare.json) mix it in;
`dream-s-edge export --search` and `search --compare-table` read the files back through `load`.
"""

from __future__ import annotations

import json
from pathlib import Path


class JsonRecord:
    """Adds `save(path)` and `load(path)` to a class with `to_dict()` and `from_dict(data)`."""

    def save(self, path: str | Path) -> Path:
        """Writes `to_dict()` as indented JSON; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path):
        """`from_dict` of the file's JSON."""
        return cls.from_dict(json.loads(Path(path).read_text()))
