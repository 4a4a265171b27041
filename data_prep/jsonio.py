"""JSON that every reader can parse: NaN and infinities (a diverged loss, a Spearman of constant
embeddings) are written as ``null`` with one warning naming the file and the keys, never as the bare
``NaN`` that Python's json module writes by default and strict parsers refuse."""
from __future__ import annotations

import json
import math
import sys
from typing import Any

_warned: set[str] = set()


def finite(obj: Any, where: str = "JSON") -> Any:
    """``obj`` with every non-finite float replaced by None; warns once per ``where`` naming the keys."""
    bad: list[str] = []

    def walk(x, path):
        if isinstance(x, float) and not math.isfinite(x):
            bad.append(path or "(value)")
            return None
        if isinstance(x, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(x)]
        return x

    out = walk(obj, "")
    if bad and where not in _warned:
        _warned.add(where)
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        print(f"warning: {where}: {', '.join(bad[:3])}{more} not finite; written as null", file=sys.stderr)
    return out


def dumps(obj: Any, where: str = "JSON", **kwargs) -> str:
    return json.dumps(finite(obj, where), allow_nan=False, **kwargs)


def dump(obj: Any, fh, where: str | None = None, **kwargs) -> None:
    json.dump(finite(obj, where or getattr(fh, "name", "JSON")), fh, allow_nan=False, **kwargs)


def read(path: str, what: str, error=None) -> Any:
    """A JSON file, or a one-line ``error`` (default UserError) naming ``what`` (the argument or key) and the
    file: missing or unreadable, or not JSON."""
    from .errors import UserError

    error = error or UserError
    try:
        with open(path) as fh:
            return json.load(fh)
    except OSError as e:
        raise error(f"{what} {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise error(f"{what} {path}: not valid JSON ({e})") from None
