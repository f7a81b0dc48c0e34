"""`mechscope vis MODEL LAYER[:CHANNEL]`: the microscope's pages for one channel, or for a whole layer.

Writes an artifact directory (`--out`, default out/vis): manifest.json, MODEL/vision/TARGET.json
with its PNG images under MODEL/vision/TARGET/, and report.html (unless --no-report); `mechscope
view DIR` shows the same pages. The pieces (each skipped with a note when it does not apply):

    channel (LAYER:CHANNEL)               whole layer (LAYER)
    feature visualisation                 feature visualisations of the first --channels channels
    dataset examples (top, bottom, crops) equivariance families
    first-layer filters                   modularity of the layer's channels
    the channel's circuit (expanded weights from the feature layer before)
    tuning curves on synthetic stimuli

MODEL is a zoo image network (fmnist-cnn, fmnist-resnet, their -quick variants) or, with --module,
--weights and --image, a name for a network of your own.
"""

from __future__ import annotations

import json
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
                                                            "with 'images' (n, C, H, W) [and 'labels' (n,)]")] = None,
        steps: Annotated[int, typer.Option(help="optimisation steps of each feature visualisation")] = 256,
        channels: Annotated[int, typer.Option(help="for a whole layer: visualise its first N channels")] = 8,
        examples: Annotated[int, typer.Option(help="dataset examples shown at each end")] = 9,
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
    from .vision.layers import VisionInputError, check_channel, feature_layer, feature_layers, parse_target
    from .vision.networks import load_network

    if steps < 1 or channels < 1 or examples < 1 or threads < 1:
        raise VisionInputError("--steps, --channels, --examples and --threads must be whole numbers >= 1")
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
                      all_layers=[fl.path for fl in feature_layers(net.module, net.spec)])
    if report:
        from .report import write_report

        written["report"] = str(write_report(out))
    written["seconds"] = round(time.monotonic() - t0, 2)
    echo(f"wrote {written['artifact']} ({written['images']} images) in {duration(written['seconds'])}"
         + (f"; report {written['report']}" if report else "") + f"; view it with `mechscope view {out}`")
    if as_json:
        echo(json.dumps(written))


def run_vis(net: Any, name: str, layer: Any, channel: int | None, out: Path, *, steps: int = 256, channels: int = 8,
            examples: int = 9, seed: int = 0, all_layers: list[str] | None = None) -> dict[str, Any]:
    """Run the pieces for `layer` (and `channel`) of the VisionNetwork `net` and write them as the vision
    artifact of model `name` into the artifact directory `out`; returns what was written."""
    from .artifacts import ArtifactWriter

    writer = ArtifactWriter(out).model(name)
    target = _target_name(layer.path, channel)
    raise NotImplementedError(f"{writer} {target}")
