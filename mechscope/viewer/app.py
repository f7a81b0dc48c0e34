"""The local viewer: a FastAPI app over a saved artifact directory (never the model).

    from mechscope.viewer import serve
    serve("out")                      # http://127.0.0.1:8765, or `mechscope view out`

Routes (all JSON errors are {"error": message} with a 4xx status; unexpected failures are logged
and answered with a generic 500 message, never a stack trace):

    /                                             the single-page viewer (static/index.html)
    /static/...                                   its JS and CSS (shipped in the package)
    /api/models                                   models and which sections each has
    /api/models/{model}/overview|attention|head_roles|training
    /api/models/{model}/patching[/{name}]         names, or one heatmap
    /api/models/{model}/circuits[/{name}]         names, or one circuit (?threshold= prunes edges)
    /api/models/{model}/features                  feature sets with their features (?set=, ?limit=)
    /api/models/{model}/features/{set}/{feature}  one feature's page
    /artifacts/{path}                             a raw artifact file, contained in the directory
"""

from __future__ import annotations

import logging
import math
import threading
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..artifacts import ArtifactError, Artifacts, ModelArtifacts, feature_rows, read_artifacts

log = logging.getLogger("mechscope.viewer")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


class NotFound(Exception):
    pass


class BadRequest(Exception):
    pass


def static_dir() -> Path:
    return Path(str(resources.files("mechscope.viewer") / "static"))


class _Stores:
    """One read-only FeatureStore connection per model, used under a lock (DuckDB connections
    are not for concurrent use from several threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: dict[str, Any] = {}

    def query(self, m: ModelArtifacts, fn):
        with self.lock:
            st = self.open.get(m.name)
            if st is None:
                st = self.open[m.name] = m.open_features()
            return fn(st)

    def close(self) -> None:
        with self.lock:
            for st in self.open.values():
                st.close()
            self.open.clear()


def create_app(artifacts_dir: str | Path = "out") -> FastAPI:
    """The viewer app over `artifacts_dir` (its manifest is checked now: a wrong schema fails here)."""
    arts = read_artifacts(artifacts_dir)
    stores = _Stores()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        stores.close()

    app = FastAPI(title="mechscope viewer", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.artifacts = arts
    app.state.stores = stores

    # ---- errors: JSON with a message, never a trace ----------------------------------------
    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(ArtifactError)
    async def _artifact(request: Request, exc: ArtifactError):
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return JSONResponse({"error": "invalid request: " + "; ".join(parts)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse({"error": msg}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("viewer error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error (details are in the viewer's log)"}, status_code=500)

    # ---- helpers -----------------------------------------------------------------------------
    def model(name: str) -> ModelArtifacts:
        if name not in arts.model_names() and name not in [m["dir"] for m in arts.manifest["models"]]:
            raise NotFound(f"no model {name!r}; models: {', '.join(arts.model_names()) or 'none'}")
        return arts.model(name)

    def need(obj: Any, what: str, m: ModelArtifacts) -> Any:
        if obj is None:
            raise NotFound(f"model {m.name!r} has no {what}")
        return obj

    # ---- pages and static files ------------------------------------------------------------
    static = static_dir()
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text())

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    # ---- API ---------------------------------------------------------------------------------
    @app.get("/api/models")
    def models() -> dict[str, Any]:
        return {"root": str(arts.root), "schema_version": arts.manifest["schema_version"],
                "created": arts.manifest.get("created"), "models": [m.summary() for m in arts.models()]}

    @app.get("/api/models/{name}/overview")
    def overview(name: str) -> dict[str, Any]:
        m = model(name)
        return {"overview": m.overview(), "summary": m.summary()}

    @app.get("/api/models/{name}/attention")
    def attention(name: str) -> dict[str, Any]:
        m = model(name)
        return need(m.attention(), "attention patterns", m)

    @app.get("/api/models/{name}/head_roles")
    def head_roles(name: str) -> dict[str, Any]:
        m = model(name)
        return need(m.head_roles(), "head-role scores", m)

    @app.get("/api/models/{name}/training")
    def training(name: str) -> dict[str, Any]:
        m = model(name)
        return need(m.training(), "training metrics", m)

    @app.get("/api/models/{name}/patching")
    def patching_list(name: str) -> dict[str, Any]:
        return {"names": model(name).patching_names()}

    @app.get("/api/models/{name}/patching/{item}")
    def patching(name: str, item: str) -> dict[str, Any]:
        m = model(name)
        if item not in m.patching_names():
            raise NotFound(f"model {m.name!r} has no patching result {item!r}; it has {m.patching_names()}")
        return m.patching(item)

    @app.get("/api/models/{name}/circuits")
    def circuit_list(name: str) -> dict[str, Any]:
        return {"names": model(name).circuit_names()}

    @app.get("/api/models/{name}/circuits/{item}")
    def circuit(name: str, item: str, threshold: float = Query(0.0, ge=0.0)) -> dict[str, Any]:
        m = model(name)
        if item not in m.circuit_names():
            raise NotFound(f"model {m.name!r} has no circuit {item!r}; it has {m.circuit_names()}")
        if not math.isfinite(threshold):
            raise BadRequest("threshold must be a finite number >= 0")
        c = m.circuit(item)
        if threshold > 0:
            c = dict(c, edges=[e for e in c["edges"] if e["score"] is None or abs(e["score"]) >= threshold])
        return c

    def _sets(st) -> list[str]:
        return [s["set_id"] for s in st.sets()]

    @app.get("/api/models/{name}/features")
    def features(name: str, set_id: str | None = Query(None, alias="set", max_length=200),
                 limit: int = Query(5000, ge=1, le=100_000)) -> dict[str, Any]:
        m = model(name)
        need(m.features_info(), "features", m)

        def read(st):
            ids = _sets(st)
            if set_id is not None and set_id not in ids:
                raise NotFound(f"no feature set {set_id!r} for model {m.name!r}; sets: {ids}")
            out = []
            for s in st.sets():
                if set_id is not None and s["set_id"] != set_id:
                    continue
                out.append({"set": s, "features": feature_rows(st, s["set_id"], limit)})
            return out

        return _clean({"sets": stores.query(m, read)})

    @app.get("/api/models/{name}/features/{set_id}/{feature}")
    def feature_page(name: str, set_id: str, feature: int) -> dict[str, Any]:
        m = model(name)
        need(m.features_info(), "features", m)

        def read(st):
            if set_id not in _sets(st):
                raise NotFound(f"no feature set {set_id!r} for model {m.name!r}; sets: {_sets(st)}")
            try:
                return st.page(set_id, feature)
            except KeyError:
                n = len(st.features(set_id))
                raise NotFound(f"no feature {feature} in set {set_id!r} (it has features 0..{n - 1})") from None

        return _clean(stores.query(m, read))

    @app.get("/artifacts/{path:path}")
    def raw(path: str):
        p = _contained(arts, path)
        return FileResponse(p, media_type="application/json" if p.suffix == ".json" else None)

    return app


def _contained(arts: Artifacts, path: str) -> Path:
    """The artifact file `path` names, refused (400) unless it is a plain relative path inside the
    artifact directory once symlinks are resolved; 404 when there is no such file."""
    parts = path.split("/")
    if (not path or "\x00" in path or "\\" in path or path.startswith("/") or Path(path).is_absolute()
            or any(not p or p.startswith(".") for p in parts)):  # also "..", ".", "//" and hidden files
        raise BadRequest(f"invalid artifact path {path!r}")
    try:
        p = arts.safe_path(arts.root, path)
    except ArtifactError as e:
        raise BadRequest(str(e)) from None
    if not p.is_file():
        raise NotFound(f"no artifact file {path!r}")
    return p


def _clean(x: Any) -> Any:
    """JSON-safe values: NaN and infinities become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def serve(artifacts_dir: str | Path = "out", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          log_level: str = "warning") -> None:
    """Serve the viewer (blocking). Binds 127.0.0.1 unless another host is given."""
    import uvicorn

    app = create_app(artifacts_dir)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "create_app", "serve", "static_dir"]
