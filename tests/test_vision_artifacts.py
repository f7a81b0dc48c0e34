"""Vision artifacts: written and read back exactly, their images served by the viewer as checked PNGs
inside the directory, and inlined in the report."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest
from fastapi.testclient import TestClient

from mechscope import artifacts as A
from mechscope.report import write_report
from mechscope.viewer import create_app

NAME = "conv2-ch3"


def grey_png(path, width: int, height: int, seed: int = 0) -> bytes:
    """A valid 8-bit grey PNG of the given size (its pixels a simple pattern); returns its bytes."""
    rows = b"".join(b"\x00" + bytes((seed + 7 * x + 13 * y) % 256 for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    path.write_bytes(png)
    return png


def write_example(root):
    """An artifact directory with one vision artifact: an image grid of 3, curves, a table and figures."""
    m = A.ArtifactWriter(root).model("zoo:fmnist-cnn")
    d = m.vision_dir(NAME)
    pngs = [grey_png(d / f"featvis-{i}.png", 28 * (i + 1), 28, seed=i) for i in range(3)]
    panels = [
        {"type": "images", "title": "Feature visualisation", "note": "Fourier parameterisation",
         "images": [{"file": f"featvis-{i}.png", "caption": f"image {i}"} for i in range(3)]},
        {"type": "curves", "title": "Orientation tuning", "x_label": "angle (degrees)", "y_label": "activation",
         "series": [{"name": "edges", "x": [0, 45, 90], "y": [0.1, 0.7, float("nan")]},
                    {"name": "lines", "x": [0, 45, 90], "y": [0.2, 0.3, 0.4]}]},
        {"type": "table", "title": "Families", "columns": ["family", "channels"], "rows": [["0°/90°", "3, 7"]]},
        {"type": "figures", "title": "Summary", "values": {"max activation": 2.5, "seconds": 1.25}},
    ]
    m.vision(NAME, panels, layer="conv2", channel=3, network={"name": "zoo:fmnist-cnn", "image": [1, 28, 28]},
             settings={"steps": 64, "seed": 0})
    return m, pngs


def test_a_vision_artifact_round_trips(tmp_path):
    _, pngs = write_example(tmp_path)
    m = A.read_artifacts(tmp_path).model("zoo:fmnist-cnn")
    assert m.vision_names() == [NAME] and m.summary()["vision"] == [NAME]
    v = m.vision(NAME)
    assert (v["layer"], v["channel"], v["settings"]) == ("conv2", 3, {"steps": 64, "seed": 0})
    grid, curves, table, figures = v["panels"]
    assert [(im["file"], im["width"], im["height"], im["caption"]) for im in grid["images"]] == [
        (f"vision/{NAME}/featvis-{i}.png", 28 * (i + 1), 28, f"image {i}") for i in range(3)]
    assert curves["series"][0]["y"] == [0.1, 0.7, None]  # NaN: not measured
    assert table["rows"] == [["0°/90°", "3, 7"]] and figures["values"]["max activation"] == 2.5
    for i, png in enumerate(pngs):
        assert m.vision_image(NAME, 0, i).read_bytes() == png
    with pytest.raises(A.ArtifactError, match="no image 3 in panel 0"):
        m.vision_image(NAME, 0, 3)
    with pytest.raises(A.ArtifactError, match="no image 0 in panel 1"):
        m.vision_image(NAME, 1, 0)  # the curves panel holds no images
    # the report's copy carries each PNG inline, byte for byte
    data = A.load_all(tmp_path)
    (entry,) = data["models"][0]["vision"]
    for im, png in zip(entry["panels"][0]["images"], pngs):
        assert im["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(im["src"].split(",", 1)[1]) == png


def test_the_writer_refuses_what_a_page_could_not_show(tmp_path):
    m = A.ArtifactWriter(tmp_path).model("net")
    d = m.vision_dir("x")
    (d / "fake.png").write_bytes(b"GIF89a not a png at all, but long enough")
    with pytest.raises(A.ArtifactError, match="fake.png is not a PNG image"):
        m.vision("x", [{"type": "images", "images": [{"file": "fake.png"}]}], layer="conv1")
    with pytest.raises(A.ArtifactError, match="gone.png of panel 'grid' does not exist"):
        m.vision("x", [{"type": "images", "title": "grid", "images": [{"file": "gone.png"}]}], layer="conv1")
    with pytest.raises(A.ArtifactError, match="invalid image file '../x.png'"):
        m.vision("x", [{"type": "images", "images": [{"file": "../x.png"}]}], layer="conv1")
    with pytest.raises(A.ArtifactError, match="type must be one of images, curves, table, figures"):
        m.vision("x", [{"type": "video"}], layer="conv1")
    with pytest.raises(A.ArtifactError, match="2 x values and 1 y values"):
        m.vision("x", [{"type": "curves", "series": [{"name": "a", "x": [0, 1], "y": [0]}]}], layer="conv1")
    with pytest.raises(A.ArtifactError, match="every row needs 2 cells"):
        m.vision("x", [{"type": "table", "columns": ["a", "b"], "rows": [[1]]}], layer="conv1")
    with pytest.raises(A.ArtifactError, match="invalid vision artifact name"):
        m.vision_dir("../up")


@pytest.fixture
def client(tmp_path):
    write_example(tmp_path)
    with TestClient(create_app(tmp_path), base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
        yield c, tmp_path


def test_the_viewer_serves_the_artifact_and_its_images(client):
    c, root = client
    base = "/api/models/zoo_fmnist-cnn/vision"
    assert c.get(base).json() == {"names": [NAME]}
    assert c.get("/api/models").json()["models"][0]["vision"] == [NAME]
    v = c.get(f"{base}/{NAME}").json()
    assert [p["type"] for p in v["panels"]] == ["images", "curves", "table", "figures"]
    r = c.get(f"{base}/{NAME}/image/0/2")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (root / "zoo_fmnist-cnn" / "vision" / NAME / "featvis-2.png").read_bytes()
    assert "attachment" not in r.headers.get("content-disposition", "")
    for path, status, words in [(f"{base}/{NAME}/image/0/3", 404, "no image 3 in panel 0"),
                                (f"{base}/{NAME}/image/1/0", 404, "no image 0 in panel 1"),
                                (f"{base}/{NAME}/image/-1/0", 400, "invalid request"),
                                (f"{base}/{NAME}/image/0/x", 400, "invalid request"),
                                (f"{base}/other", 404, "no vision artifact 'other'"),
                                (f"{base}/..%2Fmanifest/image/0/0", 404, "Not Found")]:
        r = c.get(path)
        assert r.status_code == status and words in r.json()["error"], (path, r.status_code, r.text)
        assert str(root) not in r.text


def test_an_edited_artifact_cannot_point_outside_or_at_other_files(client):
    c, root = client
    path = root / "zoo_fmnist-cnn" / "vision" / f"{NAME}.json"
    v = json.loads(path.read_text())
    (root.parent / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    v["panels"][0]["images"][0]["file"] = "../../../secret.png"
    v["panels"][0]["images"][1]["file"] = "../../manifest.json"
    v["panels"][0]["images"][2]["file"] = f"vision/{NAME}.json"
    path.write_text(json.dumps(v))
    for i in range(3):
        r = c.get(f"/api/models/zoo_fmnist-cnn/vision/{NAME}/image/0/{i}")
        assert r.status_code == 404 and "PNG" not in r.text[:8], (i, r.text)
    with pytest.raises(A.ArtifactError):
        write_report(root, root / "report.html")
