"""vision/<name>.json and vision/<name>/*.png: what a vision network's channel or layer responds to.

One artifact per target (a layer, or one channel of it), written by `mechscope vis`: a list of
panels, each one of

    {"type": "images",  "title", "note", "images": [{"file", "caption", "width", "height"}, ...]}
        an image grid (feature visualisations, dataset examples and their crops, filters,
        expanded weights); "file" is a PNG under vision/<name>/, relative to the model directory
    {"type": "curves",  "title", "note", "x_label", "y_label", "series": [{"name", "x": [...], "y": [...]}]}
        line plots on shared axes (tuning curves on synthetic stimuli)
    {"type": "table",   "title", "note", "columns": [...], "rows": [[...], ...]}
    {"type": "figures", "title", "note", "values": {name: value}}

plus the layer, the channel (or null for a whole layer), the network (name, source, image format)
and the settings that produced it. The PNG files are written by the caller into
`ModelWriter.vision_dir(name)` before `ModelWriter.vision` records them; each is checked to be a
PNG and its size is read from its header.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .schema import ArtifactError, check_name, header, plain, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PANEL_TYPES = ("images", "curves", "table", "figures")
MAX_PNG_BYTES = 16 * 1024 * 1024


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of the PNG file at `path`, read from its IHDR chunk; ArtifactError when it is
    not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise ArtifactError(f"cannot read the image {path}: {e}") from None
    if len(head) < 24 or head[:8] != PNG_MAGIC or head[12:16] != b"IHDR":
        raise ArtifactError(f"{path} is not a PNG image")
    width, height = struct.unpack(">II", head[16:24])
    if not (0 < width <= 1 << 15 and 0 < height <= 1 << 15):
        raise ArtifactError(f"{path} is a PNG of implausible size {width} x {height}")
    return width, height


def png_data_uri(path: Path) -> str:
    """The PNG file at `path` (checked) as a data: URI, for the self-contained report."""
    png_size(path)
    if path.stat().st_size > MAX_PNG_BYTES:
        raise ArtifactError(f"{path} is larger than {MAX_PNG_BYTES} bytes")
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _text(x: Any) -> str:
    return "" if x is None else str(x)


def _panel(p: Mapping[str, Any], model_dir: Path, sub: str) -> dict[str, Any]:
    kind = p.get("type")
    if kind not in PANEL_TYPES:
        raise ArtifactError(f"a vision panel's type must be one of {', '.join(PANEL_TYPES)}, got {kind!r}")
    out: dict[str, Any] = {"type": kind, "title": _text(p.get("title")), "note": _text(p.get("note"))}
    if kind == "images":
        images = []
        for im in p.get("images", []):
            name = check_name(str(im["file"]), "image file")
            path = model_dir / sub / name
            if not path.is_file():
                raise ArtifactError(f"the image {path} of panel {out['title']!r} does not exist; write it into "
                                    "ModelWriter.vision_dir(name) first")
            w, h = png_size(path)
            images.append({"file": f"{sub}/{name}", "caption": _text(im.get("caption")), "width": w, "height": h})
        out["images"] = images
        out["columns"] = int(p.get("columns") or 0)
    elif kind == "curves":
        series = []
        for s in p.get("series", []):
            x, y = plain(list(s["x"]), 6), plain(list(s["y"]), 6)
            if len(x) != len(y):
                raise ArtifactError(f"curve {s.get('name')!r} has {len(x)} x values and {len(y)} y values")
            series.append({"name": _text(s.get("name")), "x": x, "y": y})
        out.update(series=series, x_label=_text(p.get("x_label")), y_label=_text(p.get("y_label")))
    elif kind == "table":
        columns = [_text(c) for c in p.get("columns", [])]
        rows = [plain(list(r), 6) for r in p.get("rows", [])]
        if any(len(r) != len(columns) for r in rows):
            raise ArtifactError(f"table {out['title']!r}: every row needs {len(columns)} cells")
        out.update(columns=columns, rows=rows)
    else:
        out["values"] = plain(dict(p.get("values", {})), 6)
    return out


class VisionWriter:
    """`ModelWriter.vision_dir` and `ModelWriter.vision` (a mixin: the writer supplies `path`)."""

    path: Path

    def vision_dir(self, name: str) -> Path:
        """The directory the PNG files of vision artifact `name` go into (created)."""
        d = self.path / "vision" / check_name(name, "vision artifact name")
        d.mkdir(parents=True, exist_ok=True)
        return d

    def vision(self, name: str, panels: Sequence[Mapping[str, Any]], *, layer: str, channel: int | None = None,
               network: Mapping[str, Any] | None = None, settings: Mapping[str, Any] | None = None) -> Path:
        """Write vision/<name>.json: the panels (see the module docstring), checked, with the PNG files
        they name (already in `vision_dir(name)`); returns its path."""
        check_name(name, "vision artifact name")
        sub = f"vision/{name}"
        obj = {**header("vision"), "name": name, "layer": str(layer), "channel": None if channel is None else int(channel),
               "network": plain(dict(network or {})), "settings": plain(dict(settings or {})),
               "panels": [_panel(p, self.path, sub) for p in panels]}
        (self.path / "vision").mkdir(parents=True, exist_ok=True)
        return write_json(self.path / "vision" / f"{name}.json", obj, indent=1)


def image_paths(vision: Mapping[str, Any]) -> list[list[str]]:
    """The image files of a vision artifact, per panel (empty lists for panels without images)."""
    return [[str(im.get("file", "")) for im in p.get("images", [])] if p.get("type") == "images" else []
            for p in vision.get("panels", [])]
