"""`mechscope vis MODEL LAYER[:CHANNEL]`: the microscope's pages for one channel, or for a whole layer.

Writes an artifact directory (`--out`, default out/vis): manifest.json, MODEL/vision/TARGET.json
with its PNG images under MODEL/vision/TARGET/, and report.html (unless --no-report); `mechscope
view DIR` shows the same pages. The pieces (each skipped with a note when it does not apply):

    channel (LAYER:CHANNEL)               whole layer (LAYER)
    feature visualisation                 feature visualisations of the first --channels channels
    dataset examples (top, bottom, crops) first-layer filters
    first-layer filters                   orientation tuning of every channel
    the channel's circuit                 equivariance families
    tuning curves on synthetic stimuli    modularity of the convolutions up to the layer

MODEL is a zoo image network (fmnist-cnn, fmnist-resnet, their -quick variants) or, with --module,
--weights and --image, a name for a network of your own.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .cli_options import DeviceOpt


def _target_name(layer: str, channel: int | None) -> str:
    return layer if channel is None else f"{layer}-ch{channel}"


def vis(model: Annotated[str, typer.Argument(help="a zoo image network (fmnist-cnn, fmnist-resnet, ...-quick), or a "
                                                  "name for your own network given with --module")],
        target: Annotated[str, typer.Argument(metavar="LAYER[:CHANNEL]",
                                              help="a feature layer (its submodule path, e.g. conv2 or "
                                                   "layer1.0.conv1), optionally with a channel")],
        out: Annotated[Path, typer.Option(help="the artifact directory to write (created or added to)")] = Path("out/vis"),
        module: Annotated[Optional[str], typer.Option(help="your network: FILE.py:ClassName (constructed with no "
                                                           "arguments; the file is run to define it)")] = None,
        weights: Annotated[Optional[Path], typer.Option(help="its state dict, a safetensors file")] = None,
        image: Annotated[Optional[str], typer.Option(help="its image format CHANNELSxHEIGHTxWIDTH, e.g. 3x32x32")] = None,
        pixel_range: Annotated[Optional[str], typer.Option("--range", help="its pixel range LOW,HIGH (default 0,1)")
                               ] = None,
        images: Annotated[Optional[Path], typer.Option(help="dataset images for your network: a safetensors file "
                                                            "with 'images' (n, C, H, W), optionally 'labels' (n,)")] = None,
        steps: Annotated[int, typer.Option(help="optimisation steps of each feature visualisation")] = 256,
        channels: Annotated[int, typer.Option(help="for a whole layer: visualise its first N channels")] = 8,
        examples: Annotated[int, typer.Option(help="dataset examples shown at each end")] = 9,
        dataset: Annotated[Optional[int], typer.Option(help="search the first N dataset images for examples "
                                                            "(default: all of them)")] = None,
        seed: Annotated[int, typer.Option(help="seed of every random choice")] = 0,
        threads: Annotated[int, typer.Option(help="torch threads")] = 1,
        report: Annotated[bool, typer.Option(help="also write DIR/report.html")] = True,
        device: DeviceOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="end with one JSON line of what was written")] = False,
        ) -> None:
    """Feature visualisation, dataset examples, weights, tuning curves (for LAYER:CHANNEL) or equivariance
    and modularity (for a whole LAYER) of a vision network, written as artifacts and a report."""
    import torch

    from .core.progress import duration, echo, note
    from .vision.layers import VisionInputError, check_channel, feature_layer, parse_target
    from .vision.networks import load_network

    if min(steps, channels, examples, threads, 1 if dataset is None else dataset) < 1:
        raise VisionInputError("--steps, --channels, --examples, --dataset and --threads must be whole numbers >= 1")
    torch.set_num_threads(threads)
    t0 = time.monotonic()
    path, channel = parse_target(target)
    net = load_network(None if module else model, module=module, weights=weights, image=image,
                       pixel_range=pixel_range, images=images, device=device)
    layer = feature_layer(net.module, path, net.spec)  # errors name the valid layers
    if channel is not None:
        check_channel(layer, channel)
    name = model if module else net.name
    note(f"{name}: {'channel %d of ' % channel if channel is not None else ''}{layer.path} "
         f"({layer.channels} channels, {layer.height}x{layer.width}); writing into {out}")
    written = run_vis(net, name, layer, channel, out, steps=steps, channels=channels, examples=examples, seed=seed,
                      dataset=dataset)
    if report:
        from .report import write_report

        written["report"] = str(write_report(out))
    written["seconds"] = round(time.monotonic() - t0, 2)
    echo(f"wrote {written['artifact']} ({written['images']} images) in {duration(written['seconds'])}"
         + (f"; report {written['report']}" if report else "") + f"; view it with `mechscope view {out}`")
    if as_json:
        echo(json.dumps(written))


class _Pieces:
    """Collects the panels of one vision artifact: PNG files written into its directory, results saved
    beside them (`data/PIECE/`), and the pieces skipped with the reason."""

    def __init__(self, directory: Path, spec: Any):
        self.dir, self.spec = directory, spec
        self.panels: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.images = 0

    def grid(self, title: str, stem: str, images: Any, captions: list[str], note: str = "", spec: Any = None) -> None:
        """One PNG per image (n, C, H, W) in `spec`'s range (the network's by default), as an image panel."""
        from .vision.featvis import write_png

        files = []
        for i in range(len(images)):
            write_png(self.dir / f"{stem}-{i}.png", images[i:i + 1], spec or self.spec)
            files.append({"file": f"{stem}-{i}.png", "caption": captions[i]})
        self.images += len(files)
        self.panels.append({"type": "images", "title": title, "note": note, "images": files})

    def save(self, piece: str, result: Any) -> None:
        """The analysis result as safetensors + JSON under data/PIECE (its own `save`)."""
        result.save(self.dir / "data" / piece)

    def skip(self, piece: str, reason: Exception) -> None:
        """Record that `piece` does not apply to this network, with the reason, and say so."""
        from .core.progress import note

        self.skipped[piece] = str(reason)
        note(f"{piece} skipped: {reason}")




def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _source_layer(module: Any, spec: Any, layer: str) -> str:
    """The layer whose channels feed `layer`'s channel circuit: the last activation (a leaf feature layer
    that is no convolution, normalisation or pooling) before `layer` in module order, or "" (the image)."""
    from torch import nn

    from .vision.layers import feature_layers

    skip = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    source = ""
    for fl in feature_layers(module, spec):
        if fl.path == layer:
            return source
        if not any(True for _ in fl.module.children()) and not isinstance(fl.module, skip):
            source = fl.path
    return source


def _filters(module: Any, spec: Any, pieces: _Pieces) -> None:
    """The first convolution's filters as an image grid (grey images for one input channel, colour for
    three; other input counts, and networks whose first convolution has no expanded weights from the image,
    are skipped with the reason)."""
    from .vision import expanded
    from .vision.layers import VisionInputError

    try:
        filt = expanded.first_layer_filters(module, spec)
    except VisionInputError as e:  # no convolution, or a nonlinearity before it that cannot be linearised
        pieces.skip("first-layer filters", e)
        return
    pieces.save("filters", filt)
    _, c_in, kh, kw = filt.images.shape
    if c_in not in (1, 3):
        pieces.skipped["first-layer filters"] = f"{filt.layer} reads {c_in} channels; a PNG shows 1 (grey) or 3 (colour)"
        return
    pieces.grid(f"First-layer filters ({filt.layer})", "filters", filt.images,
                [f"{filt.layer}:{i}" for i in range(len(filt.images))], spec=type(spec)(c_in, kh, kw),
                note="each filter as the layer applies it to the image; grey is zero, light positive, dark negative")


def _channel_pieces(net: Any, layer: Any, c: int, pieces: _Pieces, *, steps: int, examples: int, seed: int,
                    dataset: int | None) -> None:
    import torch

    from .core.progress import note
    from .core.run import model_device
    from .models import wrap
    from .vision import expanded, tuning
    from .vision.examples import dataset_examples
    from .vision.featvis import visualize
    from .vision.layers import VisionInputError, channel_activations
    from .vision.objectives import channel, diversity

    module, spec, L = net.module, net.spec, layer.path
    note(f"feature visualisation of {L}:{c} ({steps} steps, 4 images with a diversity term)")
    fv = visualize(module, channel(L, c) + 0.5 * diversity(L), spec, batch=4, steps=steps, seed=seed)
    pieces.save("featvis", fv)
    with torch.no_grad():
        means = channel_activations(module, fv.images.to(model_device(wrap(module))), layer, c).mean((1, 2))
    pieces.grid("Feature visualisation", "featvis", fv.images, [f"mean {_fmt(float(a))}" for a in means],
                note=f"images that maximise the channel's mean activation (plus a diversity term), found by "
                     f"gradient ascent in a Fourier parameterisation with Lucid's transforms; {steps} steps, seed {seed}")
    if net.has_dataset:
        data = net.dataset()
        if dataset is not None:
            data = type(data)(data.name, data.images[:dataset], None if data.labels is None else data.labels[:dataset],
                              data.classes)
        for which in ("top", "bottom"):
            note(f"dataset examples ({which}) of {L}:{c} over {len(data.images)} images of {data.name}")
            ex = dataset_examples(module, spec, L, c, data.images, k=examples, which=which)
            pieces.save(f"examples-{which}", ex)
            caps = [f"{data.caption(int(i))} {_fmt(float(v))}".strip() for i, v in zip(ex.indices, ex.values)]
            pieces.grid(f"Dataset examples: {which} {examples}", f"examples-{which}", ex.images, caps,
                        note=f"the images of {data.name} whose {'largest' if which == 'top' else 'smallest'} value "
                             f"of the channel (over positions) is {'highest' if which == 'top' else 'lowest'}")
            pieces.grid(f"Dataset examples: {which} {examples}, receptive-field crops", f"crops-{which}", ex.crops,
                        caps, note="each image cut to the receptive field of the position that gave its value")
    else:
        pieces.skipped["dataset examples"] = "no dataset images for this network (--images gives them)"
    note("first-layer filters and the channel's circuit")
    _filters(module, spec, pieces)
    source = _source_layer(module, spec, L)
    try:
        circ = expanded.channel_circuit(module, spec, source, L, c, k=8)
    except VisionInputError as e:  # e.g. tanh or F.relu between: no expanded weights
        pieces.skip("the channel's circuit", e)
    else:
        pieces.save("circuit", circ)
        maps = expanded.weights_as_images(circ.maps).unsqueeze(1)  # (k, 1, kh, kw) in [0, 1]
        pieces.grid(f"Circuit: the strongest inputs from {source or 'the image'}", "circuit", maps,
                    [f"{source or 'image'}:{int(i)} (norm {_fmt(float(n))})" for i, n in zip(circ.inputs, circ.norms)],
                    spec=type(spec)(1, maps.shape[2], maps.shape[3]),
                    note=f"expanded weights from each input channel to {L}:{c} at the centre of its map (through "
                         "the layers between, linearised); grey is zero, light excites, dark inhibits")
    note(f"tuning curves of {L}:{c} on synthetic edges, curves and gratings")
    try:
        edge = tuning.edge_tuning(module, spec, L, channels=[c])
        summary = tuning.orientation_summary(edge)
        grat = tuning.grating_tuning(module, spec, L, channels=[c])
        curv = tuning.curve_tuning(module, spec, L, channels=[c])
    except VisionInputError as e:
        pieces.skip("tuning curves", e)
        return
    pieces.save("tuning-edges", edge)
    pieces.save("tuning-gratings", grat)
    pieces.save("tuning-curves", curv)
    series = [{"name": "edges (bright side towards the angle)", "x": edge.values["angle"], "y": edge.curve(c)}]
    pieces.panels.append({"type": "curves", "title": "Tuning: oriented edges", "x_label": "angle (degrees)",
                          "y_label": "activation at the map's centre", "series": series,
                          "note": "each value the best over small shifts of the stimulus; on a blank image the "
                                  f"channel reads {_fmt(float(edge.baseline[0]))}"})
    g = grat.curve(c)  # (angles, frequencies)
    pieces.panels.append({"type": "curves", "title": "Tuning: gratings", "x_label": "angle (degrees)",
                          "y_label": "activation (best phase)",
                          "series": [{"name": f"{float(f):g} cycles/pixel", "x": grat.values["angle"], "y": g[:, j]}
                                     for j, f in enumerate(grat.values["frequency"])]})
    r = curv.curve(c)  # (angles, radii)
    pieces.panels.append({"type": "curves", "title": "Tuning: curves by radius (inf: a straight line)",
                          "x_label": "bulge direction (degrees)", "y_label": "activation",
                          "series": [{"name": f"radius {float(v):g}", "x": curv.values["angle"], "y": r[:, j]}
                                     for j, v in enumerate(curv.values["radius"])]})
    pieces.panels.append({"type": "figures", "title": "Orientation", "values": {
        "preferred edge direction (degrees)": float(summary.preferred[0]), "peak above baseline": float(summary.peak[0]),
        "orientation selectivity index": float(summary.osi[0]),
        "circular variance": float(summary.circular_variance[0])}})


def _layer_pieces(net: Any, layer: Any, pieces: _Pieces, *, steps: int, channels: int, seed: int) -> None:
    import torch

    from .core.progress import note
    from .vision import tuning
    from .vision.equivariance import equivariance
    from .vision.featvis import visualize
    from .vision.layers import VisionInputError
    from .vision.modularity import modularity

    module, spec, L = net.module, net.spec, layer.path
    n = min(channels, layer.channels)
    imgs, caps = [], []
    for c in range(n):
        note(f"feature visualisation of {L}:{c} ({c + 1}/{n}, {steps} steps)")
        fv = visualize(module, f"{L}:{c}", spec, steps=steps, seed=seed)
        imgs.append(fv.images)
        caps.append(f"{L}:{c} mean {_fmt(float(fv.activation[0]))}")
    pieces.grid(f"Feature visualisation of channels 0 to {n - 1}", "featvis", torch.cat(imgs), caps,
                note=f"one image per channel maximising its mean activation; {steps} steps, seed {seed}")
    _filters(module, spec, pieces)
    note(f"orientation tuning of every channel of {L}")
    try:
        edge = tuning.edge_tuning(module, spec, L)
        s = tuning.orientation_summary(edge)
    except VisionInputError as e:
        pieces.skip("orientation tuning", e)
    else:
        pieces.save("tuning-edges", edge)
        order = sorted(range(len(s.channels)), key=lambda i: (-float(s.osi[i]), -float(s.peak[i])))[:16]
        pieces.panels.append({"type": "table", "title": "Most orientation-selective channels (edges)",
                              "columns": ["channel", "preferred direction (degrees)", "OSI", "peak above baseline"],
                              "rows": [[int(s.channels[i]), float(s.preferred[i]), float(s.osi[i]), float(s.peak[i])]
                                       for i in order]})
        pieces.panels.append({"type": "curves",
                              "title": f"Tuning to oriented edges: the {min(4, len(order))} most selective",
                              "x_label": "angle (degrees)", "y_label": "activation at the map's centre",
                              "series": [{"name": f"channel {int(s.channels[i])}", "x": edge.values["angle"],
                                          "y": edge.responses[i]} for i in order[:4]]})
    data = net.dataset().images[:200] if net.has_dataset else None  # equivariance's responses, co-activations
    try:
        note(f"equivariance families of {L}")
        eq = equivariance(module, L, spec, data, seed=seed)
        pieces.save("equivariance", eq)
        rows = []
        for kind, sym in (("weights", eq.weights), ("responses", eq.responses)):
            for fam in (sym.families if sym is not None else ()):
                rows.append([kind, ", ".join(map(str, fam.members)), ", ".join(fam.transforms),
                             min(fam.strengths) if fam.strengths else None])
        pieces.panels.append({"type": "table", "title": "Equivariance families", "columns":
                              ["evidence", "channels", "transformations (from the first)", "weakest link"],
                              "rows": rows, "note": f"threshold {eq.threshold}, margin {eq.margin}; "
                                                    f"{len(rows)} families"})
        pieces.panels.append({"type": "figures", "title": "Equivariance: parameters the symmetry accounts for", "values": {
            "weights determined by a family": eq.params_determined, "of the convolution's weights": eq.params_total,
            "fraction": eq.params_fraction, "families on shuffled weights (null)": eq.null_families}})
    except VisionInputError as e:
        pieces.skip("equivariance", e)
    try:
        chain = conv_chain(module, L)
        note(f"modularity of {', '.join(chain)}")
        res = modularity(module, chain, data, k=4, n_shuffles=20, seed=seed)
        pieces.save("modularity", res)
        vals = {"layers": ", ".join(chain), "weight graph n-cut": res.weights.ncut,
                "shuffled n-cut (mean)": float(res.weights.shuffled.mean()), "p-value": res.weights.p_value,
                "z-score": res.weights.z_score}
        if res.coactivation is not None:
            vals.update({"co-activation n-cut": res.coactivation.ncut, "co-activation p-value": res.coactivation.p_value})
        pieces.panels.append({"type": "figures", "title": "Modularity (spectral clustering into 4, 20 shuffled networks)",
                              "values": vals, "note": "the weight graph of the convolutions up to this layer "
                                                      "(shortcut connections are not edges)"})
    except VisionInputError as e:
        pieces.skip("modularity", e)


def conv_chain(module: Any, layer: str) -> list[str]:
    """The Conv2d layers of `module` in module order up to `layer`, each kept when it reads as many channels as
    the last one kept gives (a ResNet's main path: its 1x1 shortcut convolutions are left out)."""
    from torch import nn

    out: list[Any] = []
    for path, m in module.named_modules():
        if path and isinstance(m, nn.Conv2d) and m.groups == 1 and (not out or m.in_channels == out[-1][1].out_channels):
            out.append((path, m))
        if path == layer:
            break
    return [p for p, _ in out]


def run_vis(net: Any, name: str, layer: Any, channel: int | None, out: Path, *, steps: int = 256, channels: int = 8,
            examples: int = 9, seed: int = 0, dataset: int | None = None) -> dict[str, Any]:
    """Run the pieces for `layer` (and `channel`) of the VisionNetwork `net` and write them as the vision
    artifact of model `name` into the artifact directory `out`; returns what was written.

    Example::

        net = load_network("fmnist-cnn")
        run_vis(net, net.name, feature_layer(net.module, "conv2", net.spec), 3, Path("out/vis"), steps=64)
    """
    from .artifacts import ArtifactWriter
    from .vision.networks import describe

    writer = ArtifactWriter(out).model(name)
    target = _target_name(layer.path, channel)
    shutil.rmtree(writer.vision_dir(target))  # a run again replaces the target's files, none left over
    pieces = _Pieces(writer.vision_dir(target), net.spec)
    settings = {"steps": steps, "seed": seed, "examples": examples, "dataset": dataset}
    if channel is None:
        settings["channels"] = channels
        _layer_pieces(net, layer, pieces, steps=steps, channels=channels, seed=seed)
    else:
        _channel_pieces(net, layer, channel, pieces, steps=steps, examples=examples, seed=seed, dataset=dataset)
    if pieces.skipped:
        pieces.panels.append({"type": "table", "title": "Skipped", "columns": ["piece", "why"],
                              "rows": [[k, v] for k, v in pieces.skipped.items()]})
    path = writer.vision(target, pieces.panels, layer=layer.path, channel=channel, network=describe(net),
                         settings=settings)
    return {"artifact": str(path), "images": pieces.images, "panels": len(pieces.panels),
            "skipped": sorted(pieces.skipped)}
