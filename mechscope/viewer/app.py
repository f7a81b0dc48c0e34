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
    /api/models/{model}/graphs[/{name}]           names, or one attribution graph (nodes, edges, scores)
    /api/models/{model}/graphs/{name}/nodes/{id}  one node, its strongest edges and, for a latent whose
                                                  layer has a feature set, its dashboard
    /api/models/{model}/features                  feature sets with their features (?set=, ?limit=)
    /api/models/{model}/features/{set}/{feature}  one feature's page
    /api/models/{model}/studies[/{name}]          names, or one study (sections of text and tables, checks)
    /api/models/{model}/explanations[/{name}]     names, or one explain-all result (component table,
                                                  joint numbers, robustness across ablations)
    /api/models/{model}/vision[/{name}]           names, or one vision artifact (image grids, curves)
    /api/models/{model}/vision/{name}/image/{panel}/{index}
                                                  one of its PNG images (image/png, checked)
    /artifacts/{path}                             a raw artifact file, contained in the directory
                                                  (JSON as application/json, anything else as a download)

Nothing it reads is trusted. Every request must name this viewer in its Host header (127.0.0.1,
localhost or [::1], on the port it serves, plus the `allowed_hosts` given): a page of another site
whose name was pointed at 127.0.0.1 (DNS rebinding) gets 400. Answers carry a Content-Security-Policy
(scripts and connections to this origin only), `nosniff` and no-framing headers. API answers and error
messages name files relative to the artifact directory, never by absolute path. Path and query
parameters are bounded and checked against what the directory holds; files are read only when they
stay inside the directory once symlinks are resolved.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..artifacts import ArtifactError, Artifacts, ModelArtifacts, feature_rows, read_artifacts

log = logging.getLogger("mechscope.viewer")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
MAX_NAME = 200  # the longest model, result or feature-set name a path may carry
MAX_FEATURE = 2**31 - 1
# every name a path carries is bounded, then looked up among the names the directory holds
NameParam = Annotated[str, PathParam(min_length=1, max_length=MAX_NAME)]
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class NotFound(Exception):
    """A request for something the artifacts do not hold; the app answers 404 with the message."""


class BadRequest(Exception):
    """A request the viewer cannot answer as asked; the app answers 400 with the message."""


def static_dir() -> Path:
    """The directory of the viewer's static files inside the package."""
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


_HOST = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?$")


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header as (lower-case name without brackets, port or None); None when malformed."""
    m = _HOST.match(value)
    if m is None:
        return None
    port = int(m["port"]) if m["port"] is not None else None
    if port is not None and not 0 < port < 65536:
        return None
    return (m["v6"] or m["name"]).lower(), port


def host_names(allowed_hosts: Iterable[str] = ()) -> frozenset[str]:
    """The names a Host header may carry: this machine's, and the `allowed_hosts` given
    ("viewer.lan", "192.168.1.5", "[fe80::1]" or "fe80::1")."""
    names = set(LOCAL_HOSTS)
    for h in allowed_hosts:
        name = str(h).strip().lower()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if not name or split_host(f"[{name}]" if ":" in name else name) is None:
            raise ValueError(f"allowed host {h!r} is not a host name or address (give it without a port)")
        names.add(name)
    return frozenset(names)


def host_check(names: frozenset[str], port: int | None) -> Callable[[str], bool]:
    """Whether a Host header names this viewer: a known name and, when `port` is given, that port
    (a header without a port means 80, as browsers omit it there)."""
    def ok(value: str) -> bool:
        got = split_host(value)
        if got is None or got[0] not in names:
            return False
        return port is None or (got[1] if got[1] is not None else 80) == port
    return ok


class _Guard:
    """ASGI middleware: refuses requests whose Host header does not name this viewer (400), and
    adds SECURITY_HEADERS to every answer."""

    def __init__(self, app: ASGIApp, ok: Callable[[str], bool], expected: str):
        self.app, self.ok, self.expected = app, ok, expected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        if len(hosts) != 1 or not self.ok(hosts[0]):
            shown = hosts[0][:100] if len(hosts) == 1 else f"{len(hosts)} Host headers"
            msg = (f"this viewer answers requests addressed to {self.expected} only, not {shown!r} (a page of "
                   "another site may be trying to reach it through its own name: DNS rebinding); to reach it "
                   "under another name, start it with that name allowed (serve(..., allowed_hosts=[NAME]) or "
                   "`mechscope view --allow-host NAME`)")
            await JSONResponse({"error": msg}, status_code=400, headers=SECURITY_HEADERS)(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    if k not in headers:
                        headers[k] = v
            await send(message)

        await self.app(scope, receive, send_secured)


def create_app(artifacts_dir: str | Path = "out", *, port: int | None = None,
               allowed_hosts: Iterable[str] = ()) -> FastAPI:
    """The viewer app over `artifacts_dir` (its manifest is checked now: a wrong schema fails here).

    Requests must carry a Host header naming 127.0.0.1, localhost, [::1] or one of `allowed_hosts`,
    with `port` when it is given (None: any port, for an app served by someone else)."""
    arts = read_artifacts(artifacts_dir)
    stores = _Stores()
    names = host_names(allowed_hosts)
    shown = ", ".join(f"[{n}]" if ":" in n else n for n in sorted(names))
    expected = shown + (f" on port {port}" if port is not None else "")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        """The app's lifetime: the feature stores it opened are closed when it shuts down."""
        yield
        stores.close()

    app = FastAPI(title="mechscope viewer", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.artifacts = arts
    app.state.stores = stores
    app.add_middleware(_Guard, ok=host_check(names, port), expected=expected)
    root_text = str(arts.root)

    def relative(msg: str) -> str:
        """`msg` with the artifact directory's absolute path cut off the file names it holds."""
        return msg.replace(root_text + "/", "").replace(root_text, arts.root.name)

    # ---- errors: JSON with a message, never a trace ----------------------------------------
    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return JSONResponse({"error": relative(str(exc))}, status_code=404)

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest):
        return JSONResponse({"error": relative(str(exc))}, status_code=400)

    @app.exception_handler(ArtifactError)
    async def _artifact(request: Request, exc: ArtifactError):
        return JSONResponse({"error": relative(str(exc))}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ())[1:])  # without "query" / "path"
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
            raise NotFound(f"no model {_shown(name)}; models: {', '.join(arts.model_names()) or 'none'}")
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
        return {"root": arts.root.name, "schema_version": arts.manifest["schema_version"],
                "created": arts.manifest.get("created"), "models": [m.summary() for m in arts.models()]}

    @app.get("/api/models/{name}/overview")
    def overview(name: NameParam) -> dict[str, Any]:
        m = model(name)
        return {"overview": m.overview(), "summary": m.summary()}

    @app.get("/api/models/{name}/attention")
    def attention(name: NameParam) -> dict[str, Any]:
        m = model(name)
        return need(m.attention(), "attention patterns", m)

    @app.get("/api/models/{name}/head_roles")
    def head_roles(name: NameParam) -> dict[str, Any]:
        m = model(name)
        return need(m.head_roles(), "head-role scores", m)

    @app.get("/api/models/{name}/training")
    def training(name: NameParam) -> dict[str, Any]:
        m = model(name)
        return need(m.training(), "training metrics", m)

    @app.get("/api/models/{name}/patching")
    def patching_list(name: NameParam) -> dict[str, Any]:
        return {"names": model(name).patching_names()}

    @app.get("/api/models/{name}/patching/{item}")
    def patching(name: NameParam, item: NameParam) -> dict[str, Any]:
        m = model(name)
        if item not in m.patching_names():
            raise NotFound(f"model {m.name!r} has no patching result {_shown(item)}; it has {m.patching_names()}")
        return m.patching(item)

    @app.get("/api/models/{name}/circuits")
    def circuit_list(name: NameParam) -> dict[str, Any]:
        return {"names": model(name).circuit_names()}

    @app.get("/api/models/{name}/circuits/{item}")
    def circuit(name: NameParam, item: NameParam, threshold: float = Query(0.0, ge=0.0)) -> dict[str, Any]:
        m = model(name)
        if item not in m.circuit_names():
            raise NotFound(f"model {m.name!r} has no circuit {_shown(item)}; it has {m.circuit_names()}")
        if not math.isfinite(threshold):
            raise BadRequest("threshold must be a finite number >= 0")
        c = m.circuit(item)
        if threshold > 0:
            c = dict(c, edges=[e for e in c["edges"] if e["score"] is None or abs(e["score"]) >= threshold])
        return c

    def named_item(m: ModelArtifacts, kind: str, label: str, item: str) -> str:
        """`item` if model `m` has a `kind` artifact of that name, else 404 listing the ones it has."""
        names = getattr(m, f"{kind}_names")()
        if item not in names:
            raise NotFound(f"model {m.name!r} has no {label} {_shown(item)}; it has {names}")
        return item

    def named_routes(kind: str, route: str, label: str) -> None:
        """GET /api/models/{name}/ROUTE (the names of a model's `kind` artifacts, `ModelArtifacts.KIND_names`)
        and /api/models/{name}/ROUTE/{item} (one of them, `ModelArtifacts.KIND(item)`, JSON-safe)."""
        def names(name: NameParam) -> dict[str, Any]:
            return {"names": getattr(model(name), f"{kind}_names")()}

        def one(name: NameParam, item: NameParam) -> dict[str, Any]:
            m = model(name)
            return _clean(getattr(m, kind)(named_item(m, kind, label, item)))

        app.add_api_route(f"/api/models/{{name}}/{route}", names, methods=["GET"], name=f"{kind}_list")
        app.add_api_route(f"/api/models/{{name}}/{route}/{{item}}", one, methods=["GET"], name=kind)

    named_routes("explanation", "explanations", "explanation")
    named_routes("study", "studies", "study")
    named_routes("vision", "vision", "vision artifact")

    def _sets(st) -> list[str]:
        return [s["set_id"] for s in st.sets()]

    def saved_graph(m: ModelArtifacts, item: str) -> dict[str, Any]:
        if item not in m.graph_names():
            raise NotFound(f"model {m.name!r} has no graph {_shown(item)}; it has {m.graph_names()}")
        return m.graph(item)

    @app.get("/api/models/{name}/graphs")
    def graph_list(name: NameParam) -> dict[str, Any]:
        return {"names": model(name).graph_names()}

    @app.get("/api/models/{name}/graphs/{item}")
    def graph(name: NameParam, item: NameParam) -> dict[str, Any]:
        m = model(name)
        g = saved_graph(m, item)
        return _clean(dict(g, dashboards=bool(g["feature_sets"]) and m.features_info() is not None))

    @app.get("/api/models/{name}/graphs/{item}/nodes/{node}")
    def graph_node(name: NameParam, item: NameParam, node: int = PathParam(ge=0, le=MAX_FEATURE),
                   top: int = Query(8, ge=0, le=1000)) -> dict[str, Any]:
        m = model(name)
        g = saved_graph(m, item)
        found = [n for n in g["nodes"] if isinstance(n, dict) and n.get("id") == node]
        if not found:
            ids = [n.get("id") for n in g["nodes"] if isinstance(n, dict)]
            raise NotFound(f"graph {item!r} keeps no node {node} (it keeps {len(ids)} nodes: "
                           f"{ids[:20]}{' …' if len(ids) > 20 else ''})")
        n = found[0]
        edges = [e for e in g["edges"] if isinstance(e, dict) and isinstance(e.get("weight"), (int, float))]
        strongest = lambda es: sorted(es, key=lambda e: -abs(e["weight"]))[:top]  # noqa: E731
        out: dict[str, Any] = {"node": n, "incoming": strongest([e for e in edges if e.get("target") == node]),
                               "outgoing": strongest([e for e in edges if e.get("source") == node]),
                               "feature_set": None, "dashboard": None}
        if n.get("kind") != "latent":
            out["note"] = f"a {n.get('kind')} node has no dashboard (only latents do)"
            return _clean(out)
        set_id = g["feature_sets"].get(str(n.get("layer"))) if isinstance(g["feature_sets"], dict) else None
        if set_id is None or m.features_info() is None:
            out["note"] = (f"no feature store holds the dashboards of layer {n.get('layer')}'s latents (save the "
                           "graph with --store and --feature-set to show them)")
            return _clean(out)
        out["feature_set"] = set_id

        def read(st):
            if set_id not in _sets(st):
                return None, f"the graph names feature set {set_id!r}, which the model's store does not hold"
            try:
                return st.page(set_id, int(n["index"])), None
            except (KeyError, TypeError, ValueError):
                return None, f"feature set {set_id!r} has no feature {n.get('index')!r}"

        out["dashboard"], note = stores.query(m, read)
        if note:
            out["note"] = note
        return _clean(out)

    @app.get("/api/models/{name}/features")
    def features(name: NameParam, set_id: str | None = Query(None, alias="set", min_length=1, max_length=MAX_NAME),
                 limit: int = Query(5000, ge=1, le=100_000)) -> dict[str, Any]:
        m = model(name)
        need(m.features_info(), "features", m)

        def read(st):
            ids = _sets(st)
            if set_id is not None and set_id not in ids:
                raise NotFound(f"no feature set {_shown(set_id)} for model {m.name!r}; sets: {ids}")
            out = []
            for s in st.sets():
                if set_id is not None and s["set_id"] != set_id:
                    continue
                out.append({"set": s, "features": feature_rows(st, s["set_id"], limit)})
            return out

        return _clean({"sets": stores.query(m, read)})

    @app.get("/api/models/{name}/features/{set_id}/{feature}")
    def feature_page(name: NameParam, set_id: NameParam,
                     feature: int = PathParam(ge=0, le=MAX_FEATURE)) -> dict[str, Any]:
        m = model(name)
        need(m.features_info(), "features", m)

        def read(st):
            if set_id not in _sets(st):
                raise NotFound(f"no feature set {_shown(set_id)} for model {m.name!r}; sets: {_sets(st)}")
            try:
                return st.page(set_id, feature)
            except KeyError:
                n = len(st.features(set_id))
                raise NotFound(f"no feature {feature} in set {set_id!r} (it has features 0..{n - 1})") from None

        return _clean(stores.query(m, read))

    @app.get("/api/models/{name}/vision/{item}/image/{panel}/{index}")
    def vision_image(name: NameParam, item: NameParam, panel: int = PathParam(ge=0, le=10_000),
                     index: int = PathParam(ge=0, le=100_000)) -> FileResponse:
        m = model(name)
        try:
            p = m.vision_image(named_item(m, "vision", "vision artifact", item), panel, index)
        except ArtifactError as e:
            raise NotFound(str(e)) from None
        return FileResponse(p, media_type="image/png")

    @app.get("/artifacts/{path:path}")
    def raw(path: str = PathParam(max_length=1000)):
        p = _contained(arts, path)
        if p.suffix == ".json":
            return FileResponse(p, media_type="application/json")
        # anything else (the feature store, a report, a stray file) is a download, never a page
        return FileResponse(p, media_type="application/octet-stream", filename=p.name,
                            content_disposition_type="attachment")

    return app


def _shown(text: str, n: int = 120) -> str:
    """A value from the request, quoted and cut to `n` characters, for an error message."""
    return repr(text if len(text) <= n else text[:n] + "…")


def _contained(arts: Artifacts, path: str) -> Path:
    """The artifact file `path` names, refused (400) unless it is a plain relative path inside the
    artifact directory once symlinks are resolved; 404 when there is no such file."""
    parts = path.split("/")
    if (not path or "\x00" in path or "\\" in path or path.startswith("/") or Path(path).is_absolute()
            or any(not p or p.startswith(".") for p in parts)):  # also "..", ".", "//" and hidden files
        raise BadRequest(f"invalid artifact path {_shown(path)}")
    try:
        p = arts.safe_path(arts.root, path)
    except ArtifactError as e:
        raise BadRequest(str(e)) from None
    if not p.is_file():
        raise NotFound(f"no artifact file {_shown(path)}")
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
          log_level: str = "warning", allowed_hosts: Iterable[str] = ()) -> None:
    """Serve the viewer (blocking). Binds 127.0.0.1 unless another host is given; requests must be
    addressed to this machine's names, the bound host, or one of `allowed_hosts` (a wildcard bind,
    0.0.0.0 or ::, needs the names other machines use to be listed there)."""
    import uvicorn

    extra = list(allowed_hosts)
    if host not in LOCAL_HOSTS and host not in WILDCARD_HOSTS:
        extra.append(host)
    app = create_app(artifacts_dir, port=port or None, allowed_hosts=extra)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "LOCAL_HOSTS", "create_app", "host_check", "host_names", "serve",
           "split_host", "static_dir"]
