"""Local web viewer of saved artifacts (`mechscope.artifacts`); it never imports analyses or models.

`serve(dir)` needs FastAPI and uvicorn; `create_app(dir)` builds the app (tests use it directly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def create_app(artifacts_dir: str | Path = "out", **kw: Any) -> Any:
    """The FastAPI app (keywords: `port`, `allowed_hosts`; see `mechscope.viewer.app.create_app`).

    Example::

        from mechscope.viewer import create_app
        app = create_app("out", allowed_hosts=["viewer.local"])   # serve it with any ASGI server
    """
    from .app import create_app as _create

    return _create(artifacts_dir, **kw)


def serve(artifacts_dir: str | Path = "out", host: str = "127.0.0.1", port: int = 8765, **kw: Any) -> None:
    """Serve the viewer on http://HOST:PORT (127.0.0.1 unless told otherwise); blocks. Requests
    addressed to another name than this machine's or HOST's get 400 unless listed in `allowed_hosts`.

    Example::

        from mechscope.viewer import serve
        serve("out", port=8765)                  # http://127.0.0.1:8765, until Ctrl-C
    """
    from .app import serve as _serve

    _serve(artifacts_dir, host=host, port=port, **kw)


__all__ = ["create_app", "serve"]
