"""What every bench script prints: one JSON line (``--json``, for scripts and the notes), or
a table of names and values for a person."""

from __future__ import annotations

import json
from typing import Any


def show(result: dict[str, Any], as_json: bool) -> int:
    """Print ``result``; the exit code (0)."""
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        width = max(map(len, result))
        for name, value in result.items():
            print(f"{name:{width}} {value}")
    return 0
