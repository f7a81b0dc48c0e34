"""Text placed inside HTML script elements: artifact data as JSON, and the inline renderers.

Artifact strings are data from a file, so nothing in them may end the element that holds them or
change how the HTML parser reads it. `json_for_script` writes `<`, `>` and `&` as JSON escapes
(`\\u003c`...), so no `</script>` and no `<!--` (which would make the parser skip the real end tag)
can appear; U+2028/9 are escaped for older parsers. `script_text` checks that an inline script of
ours holds no such sequence, and `csp_hash` gives its Content-Security-Policy hash, so a page can
allow exactly its own inline scripts and no injected handler.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_BREAKOUT = re.compile(r"<(?:/?script|!--)", re.IGNORECASE)


def json_for_script(obj: Any, default: Callable[[Any], Any] | None = None) -> str:
    """`obj` as JSON that is safe as the text of a <script> element (and still valid JSON and JS);
    `default` converts values JSON has no type for, as in `json.dumps`."""
    s = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=default)
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group()], s)


def script_text(js: str) -> str:
    """An inline script of ours, refused if it could end its element early or hide the end tag."""
    m = _BREAKOUT.search(js)
    if m:
        raise ValueError(f"an inline script contains {m.group()!r}, which would break the page's HTML; "
                         "write it differently (e.g. '<\\/script', '<' + '!--')")
    return js


def csp_hash(js: str) -> str:
    """The CSP source expression ('sha256-...') that allows exactly this inline script."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii") + "'"


__all__ = ["csp_hash", "json_for_script", "script_text"]
