"""Activation store: activations at Sites of any model over a token dataset, in sharded safetensors.

A store directory holds

    manifest.json              schema, the harvest config and its hash, the model's name and weight
                               fingerprint, the token digest, each site's row width, finished shards
    shard_00000.safetensors    the rows of sequences [i*S, (i+1)*S): one tensor per site
                               (rows, width) and `tokens`, `seq`, `pos` (int64: where each row is from)

Harvest steps (`harvest`):
1. hash the config together with a fingerprint of the model's weights and a digest of the token
   ids; a directory that holds a different harvest is refused;
2. scan the directory: delete temporary files; keep shards the manifest lists (their size is
   checked); adopt shards that were written but not yet listed if their digest and config hash
   check out; delete anything else;
3. for each missing shard, in order: run the model over its sequences (the forward pass stops
   after the last requested site), write the shard atomically, then the manifest atomically;
4. mark the manifest complete.
The whole harvest holds the directory's lock file (`harvest.lock`), so two harvests never write one
store. Steps 1-2 (`plan_harvest`) and a shard's capture and write (`shard_tensors`, `write_shard`)
are separate so that a distributed harvest (`ray_harvest`) runs step 3 on many workers.
A shard always covers the same sequences, so a harvest killed at any moment (SIGKILL included)
and started again writes every shard exactly once: nothing is lost and nothing is duplicated.

Reading: `ActivationStore(path)` opens a finished store; `ShuffleBuffer` draws shuffled training
batches from it with bounded memory.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from ..core.files import remove_partial_writes
from ..core.interventions import Context, Replace
from ..core.progress import progress_bar
from ..core.run import resolve, run
from ..core.site import Site
from .files import (DictionaryFileError, config_hash, read_json, read_meta, read_tensors, write_json,
                    write_tensors)

SCHEMA = 1
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard_(\d{5,})\.safetensors$")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INDEX_KEYS = ("tokens", "seq", "pos")  # per-row provenance stored next to the activations


@dataclass(frozen=True)
class HarvestConfig:
    """What a harvest stores and how it is cut into shards.

    Example::

        from mechscope.dictionaries import HarvestConfig, harvest
        cfg = HarvestConfig(sites=("resid_post.14", "mlp.post.3"), batch_size=8, drop_first=1)
        harvest(model, tokens, "acts/", cfg)
    """

    sites: tuple[str, ...]  # site names as the model's adapter understands them, e.g. ("resid_post.6",)
    batch_size: int = 8  # sequences per forward pass
    seqs_per_shard: int = 256  # sequences in one shard file (the last shard may hold fewer)
    drop_first: int = 0  # positions at the start of each sequence that are not stored (BOS, attention sink)
    dtype: str = "float32"  # storage dtype: float32, float16 or bfloat16

    def __post_init__(self) -> None:
        if isinstance(self.sites, str):
            object.__setattr__(self, "sites", (self.sites,))
        object.__setattr__(self, "sites", tuple(str(s) for s in self.sites))
        if not self.sites:
            raise ValueError("HarvestConfig.sites is empty: name at least one site, e.g. ('resid_post.6',)")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"HarvestConfig.sites repeats a site: {self.sites}")
        for f in ("batch_size", "seqs_per_shard"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"HarvestConfig.{f} must be positive, got {getattr(self, f)}")
        if self.drop_first < 0:
            raise ValueError(f"HarvestConfig.drop_first must be >= 0, got {self.drop_first}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"HarvestConfig.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")


# --- identity of what is harvested ------------------------------------------------------------------

def model_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) over the names, dtypes, shapes and bytes of a module's state dict."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()[:16]


def tokens_digest(tokens: Tensor) -> str:
    """A short SHA-256 digest of token ids (shape and values): a harvest checks it when it resumes."""
    t = tokens.detach().to("cpu", torch.int64).contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|".encode())
    h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()[:16]


# --- capturing ------------------------------------------------------------------------------------

class _Stop(Exception):
    """Raised inside the forward pass once the last requested site has been seen."""


def capture_sites(model: Any, inputs: Any, sites: Sequence[Site | str], stop_early: bool = True
                  ) -> dict[Site, Tensor]:
    """Activations at `sites` (copies), from a forward pass that stops after the last of them.

    Layers after the last site are never computed: harvesting a middle layer costs half a forward pass.
    The hooks are `run`'s own, removed in its `finally` whatever happens.

    Example::

        from mechscope.dictionaries import capture_sites
        acts = capture_sites(model, tokens, ["resid_post.1"])    # tokens (batch, pos)
        acts[ms.Site.parse("resid_post.1")]                      # (batch, pos, d_model)
    """
    valid = set(model.sites())
    asked = [resolve(model, s, valid) for s in sites]
    wanted = list(dict.fromkeys(s.whole for s in asked))  # one hook per whole site; heads are sliced after
    order = {s: i for i, s in enumerate(model.sites())}
    last = max(wanted, key=lambda s: order.get(s, -1))
    got: dict[Site, Tensor] = {}

    def grab(site: Site):
        def fn(x: Tensor, ctx: Context) -> Tensor:
            got[site] = x.detach().clone()
            if stop_early and site == last and len(got) == len(wanted):
                raise _Stop
            return x
        return fn

    try:
        run(model, inputs, interventions=[Replace(s, fn=grab(s)) for s in wanted])
    except _Stop:
        pass
    return {s: got[s.whole] if s.head is None else got[s.whole].select(s.whole.layout.head, s.head)
            for s in asked}


def _rows(x: Tensor, drop_first: int, site: Site) -> Tensor:
    """(batch, pos, ...) -> (batch * (pos - drop_first), width): one row per stored token."""
    if x.dim() < 3:
        raise DictionaryFileError(f"{site.name} has shape {tuple(x.shape)}; a store needs (batch, pos, ...) "
                                  "activations of a token model")
    x = x[:, drop_first:]
    return x.reshape(x.shape[0] * x.shape[1], -1)  # (batch*pos, width): heads and d_head flattened


# --- writing ---------------------------------------------------------------------------------------

def shard_name(i: int) -> str:
    """The file name of shard `i`: shard_00000.safetensors, ..."""
    return f"shard_{i:05d}.safetensors"


@dataclass
class HarvestPlan:
    """What is left of a harvest into `out`, after the directory was checked and tidied (steps 1-2)."""

    out: Path
    config: HarvestConfig  # with canonical site names
    sites: list[Site]
    config_hash: str
    manifest: dict[str, Any]
    n_seq: int
    seq_len: int

    @property
    def n_shards(self) -> int:
        """The number of shards the harvest writes."""
        return int(self.manifest["n_shards"])

    @property
    def todo(self) -> list[int]:
        """Indices of the shards not written yet."""
        return [i for i in range(self.n_shards) if str(i) not in self.manifest["shards"]]

    def bounds(self, i: int) -> tuple[int, int]:
        """Sequences [lo, hi) of shard i."""
        return i * self.config.seqs_per_shard, min(self.n_seq, (i + 1) * self.config.seqs_per_shard)

    def record(self, i: int, entry: dict[str, Any], widths: dict[str, int]) -> None:
        """List a written shard in the manifest (kept in shard order) and write the manifest atomically."""
        if not self.manifest["widths"]:
            self.manifest["widths"] = dict(widths)
        shards = self.manifest["shards"]
        shards[str(i)] = entry
        self.manifest["shards"] = {k: shards[k] for k in sorted(shards, key=int)}
        write_json(self.out / MANIFEST, self.manifest)

    def finish(self) -> None:
        """Step 4: mark the manifest complete."""
        missing = self.todo
        if missing:
            raise DictionaryFileError(f"{self.out}: shards {missing[:5]} were not written; run the harvest again")
        self.manifest["complete"] = True
        self.manifest["n_rows"] = sum(v["rows"] for v in self.manifest["shards"].values())
        write_json(self.out / MANIFEST, self.manifest)


def plan_harvest(model: Any, tokens: Tensor, out: str | Path, config: HarvestConfig) -> HarvestPlan:
    """Steps 1-2: check the inputs, hash the harvest's identity, and open (or resume) the store `out`.
    Call it while holding `harvest_lock(out)`."""
    out = Path(out)
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (n_seq, seq_len) token ids, got shape {tuple(tokens.shape)}")
    n_seq, seq_len = map(int, tokens.shape)
    if config.drop_first >= seq_len:
        raise ValueError(f"drop_first={config.drop_first} leaves no position of sequences of length {seq_len}")
    sites = [resolve(model, s) for s in config.sites]
    bad = [s.name for s in sites if s.name in INDEX_KEYS]
    if bad:
        raise ValueError(f"site names {bad} collide with the store's own columns {INDEX_KEYS}")
    # the config is hashed with canonical site names: "resid_post.6" and "blocks.6.hook_resid_post" agree
    canonical = replace(config, sites=tuple(s.name for s in sites))
    identity = {"schema": SCHEMA, "config": asdict(canonical), "sites": [s.name for s in sites],
                "model": getattr(model, "name", type(model.module).__name__),
                "model_fingerprint": model_fingerprint(model.module),
                # eager and fused attention differ in the last bits: never mix their shards
                "attention": getattr(getattr(model.module, "config", None), "_attn_implementation", None),
                "tokens": {"digest": tokens_digest(tokens), "n_seq": n_seq, "seq_len": seq_len}}
    chash = config_hash(identity)
    n_shards = -(-n_seq // config.seqs_per_shard)
    manifest = _open_for_harvest(out, identity, chash, n_shards)
    return HarvestPlan(out, canonical, sites, chash, manifest, n_seq, seq_len)


def shard_tensors(model: Any, tokens: Tensor, lo: int, sites: Sequence[Site], config: HarvestConfig
                  ) -> dict[str, Tensor]:
    """Step 3 for one shard: the stored columns of the sequences `tokens`, which start at sequence `lo`."""
    dtype = _DTYPES[config.dtype]
    n, seq_len = map(int, tokens.shape)
    parts: dict[Site, list[Tensor]] = {s: [] for s in sites}
    for b in range(0, n, config.batch_size):
        got = capture_sites(model, tokens[b:b + config.batch_size], sites)
        for s in sites:
            parts[s].append(_rows(got[s], config.drop_first, s).to("cpu", dtype))
    kept = seq_len - config.drop_first
    seq = torch.arange(lo, lo + n).repeat_interleave(kept)
    pos = torch.arange(config.drop_first, seq_len).repeat(n)
    data = {s.name: torch.cat(parts[s]) for s in sites}
    return data | {"tokens": tokens[:, config.drop_first:].reshape(-1).to("cpu", torch.int64), "seq": seq, "pos": pos}


def write_shard(out: Path, i: int, data: dict[str, Tensor], chash: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Write shard i atomically; its manifest entry and the width of each site."""
    path = Path(out) / shard_name(i)
    sha = write_tensors(path, data, {"config_hash": chash, "shard": str(i)})
    widths = {k: int(v.shape[1]) for k, v in data.items() if k not in INDEX_KEYS}
    return {"file": path.name, "rows": int(data["seq"].numel()), "sha256": sha, "bytes": path.stat().st_size}, widths


LOCK = "harvest.lock"


@contextmanager
def harvest_lock(out: str | Path) -> Iterator[None]:
    """Hold the store's lock file while harvesting into it: a second harvest into the same directory
    is refused with a clear error. The operating system releases the lock when its process ends,
    however it ends (SIGKILL too), so a killed harvest never leaves a stale lock behind."""
    import fcntl
    import os
    import socket

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise DictionaryFileError(f"{out} is being written by another harvest ({holder}); wait for it to "
                                      "finish, or stop it, before harvesting into this directory") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        f.close()  # closing the file releases the lock


def harvest(model: Any, tokens: Tensor, out: str | Path, config: HarvestConfig, *,
            progress: bool = True) -> "ActivationStore":
    """Harvest `config.sites` of `model` over `tokens` (n_seq, seq_len) into the store `out`.

    Resumes a killed harvest of the same config; refuses a directory holding another one, and one
    that another harvest is writing.

    Example::

        from mechscope.dictionaries import HarvestConfig, harvest
        model = ms.load("smollm2-135m")
        store = harvest(model, tokens, "acts/", HarvestConfig(sites=("resid_post.14",)))   # tokens (n_seq, seq_len)
    """
    with harvest_lock(out):
        plan = plan_harvest(model, tokens, out, config)
        todo = plan.todo
        bar = progress_bar(total=plan.n_shards, initial=plan.n_shards - len(todo), desc=f"harvest {plan.out.name}",
                           unit="shard", disable=not progress)
        for i in todo:
            lo, hi = plan.bounds(i)
            data = shard_tensors(model, tokens[lo:hi], lo, plan.sites, plan.config)
            plan.record(i, *write_shard(plan.out, i, data, plan.config_hash))
            bar.update(1)
        bar.close()
        plan.finish()
    return ActivationStore(out)


def _open_for_harvest(out: Path, identity: dict[str, Any], chash: str, n_shards: int) -> dict[str, Any]:
    """Step 2: the manifest to continue from, after tidying the directory."""
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / MANIFEST
    if mpath.is_file():
        manifest = read_json(mpath)
        if manifest.get("config_hash") != chash:
            raise DictionaryFileError(
                f"{out} holds a harvest of another config (hash {manifest.get('config_hash')}, this one is "
                f"{chash}: different sites, model weights, tokens or sharding); use another directory or delete it")
    else:
        manifest = {**identity, "config_hash": chash, "n_shards": n_shards, "widths": {}, "shards": {},
                    "complete": False}
    remove_partial_writes(out)  # writes that a kill interrupted
    listed = manifest["shards"]
    for key, entry in list(listed.items()):
        p = out / entry["file"]
        if not p.is_file() or p.stat().st_size != entry["bytes"]:
            del listed[key]  # damaged after it was listed: write it again
    for p in sorted(out.iterdir()):
        m = _SHARD_RE.match(p.name)
        if not m or str(int(m.group(1))) in listed:
            continue
        i = int(m.group(1))
        try:  # written, but killed before the manifest listed it: adopt it if it is whole and ours
            tensors, meta = read_tensors(p)
            ok = meta.get("config_hash") == chash and meta.get("shard") == str(i) and i < n_shards
        except DictionaryFileError:
            ok = False
        if ok:
            if not manifest["widths"]:
                manifest["widths"] = {k: int(v.shape[1]) for k, v in tensors.items() if k not in INDEX_KEYS}
            listed[str(i)] = {"file": p.name, "rows": int(tensors["seq"].numel()), "sha256": meta["sha256"],
                              "bytes": p.stat().st_size}
        else:
            p.unlink()
    manifest["complete"] = len(listed) == n_shards and manifest.get("complete", False)
    write_json(mpath, manifest)
    return manifest


# --- reading ---------------------------------------------------------------------------------------

class ActivationStore:
    """A finished harvest: its sites, row widths and shards, read lazily.

    Example::

        from mechscope import dictionaries as dl
        store = dl.ActivationStore("acts/")      # a finished harvest
        train_shards, held = store.split(held_out=4)
        x, toks = store.load(["resid_post.1", "tokens"], held)   # x (rows, d_model), toks (rows,)
    """

    def __init__(self, path: str | Path, allow_partial: bool = False):
        self.path = Path(path)
        self.manifest = read_json(self.path / MANIFEST)
        if self.manifest.get("schema") != SCHEMA:
            raise DictionaryFileError(f"{self.path / MANIFEST} has schema {self.manifest.get('schema')}, "
                                      f"this mechscope reads schema {SCHEMA}")
        if not self.manifest.get("complete") and not allow_partial:
            raise DictionaryFileError(f"{self.path} is an unfinished harvest ({len(self.manifest['shards'])} of "
                                      f"{self.manifest['n_shards']} shards); run the same harvest again to finish it")
        self.shards = sorted(int(k) for k in self.manifest["shards"])

    @property
    def sites(self) -> list[str]:
        """The harvested site names, as the manifest lists them."""
        return list(self.manifest["sites"])

    @property
    def widths(self) -> dict[str, int]:
        """{site name: width of its vectors}, e.g. {"blocks.6.hook_resid_post": 576}."""
        return dict(self.manifest["widths"])

    @property
    def config_hash(self) -> str:
        """The digest of the harvest's settings (model, tokens, config) that a resumed harvest must match."""
        return self.manifest["config_hash"]

    @property
    def n_rows(self) -> int:
        """The number of stored rows (tokens) over the store's shards."""
        return sum(self.manifest["shards"][str(i)]["rows"] for i in self.shards)

    def _key(self, site: Site | str) -> str:
        name = site.name if isinstance(site, Site) else str(site)
        if name in self.manifest["sites"] or name in INDEX_KEYS:
            return name
        try:
            parsed = Site.parse(name).name
        except Exception:  # noqa: BLE001 - a generic model's module path
            parsed = name
        if parsed not in self.manifest["sites"]:
            raise DictionaryFileError(f"{self.path} has no site {name!r}; it holds {', '.join(self.sites)}")
        return parsed

    def shard(self, i: int, keys: Sequence[Site | str] | None = None, check: bool = False) -> dict[str, Tensor]:
        """Tensors of shard `i` (only `keys` if given); `check` verifies the whole file's digest."""
        if str(i) not in self.manifest["shards"]:
            raise DictionaryFileError(f"{self.path} has no shard {i}; it has {len(self.shards)} shards")
        path = self.path / self.manifest["shards"][str(i)]["file"]
        if check:
            tensors, _ = read_tensors(path)
            return tensors if keys is None else {self._key(k): tensors[self._key(k)] for k in keys}
        read_meta(path)
        names = None if keys is None else [self._key(k) for k in keys]
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in (names or f.keys())}

    def load(self, keys: Sequence[Site | str], shards: Sequence[int] | None = None,
             dtype: torch.dtype = torch.float32) -> list[Tensor]:
        """Every row of `keys` from `shards` (default all) in memory, in shard order."""
        shards = self.shards if shards is None else list(shards)
        parts = [self.shard(i, keys) for i in shards]
        names = [self._key(k) for k in keys]
        return [torch.cat([p[n] for p in parts]).to(dtype if n not in INDEX_KEYS else torch.int64)
                for n in names]

    def verify(self) -> None:
        """Read every shard and check its digest against the file and the manifest."""
        for i in self.shards:
            entry = self.manifest["shards"][str(i)]
            _, meta = read_tensors(self.path / entry["file"])
            if meta["sha256"] != entry["sha256"]:
                raise DictionaryFileError(f"{self.path / entry['file']} differs from the shard the manifest lists")

    def split(self, held_out: int) -> tuple[list[int], list[int]]:
        """Shard indices (train, held_out): the last `held_out` shards are kept for evaluation."""
        if not 0 < held_out < len(self.shards):
            raise ValueError(f"held_out must be in 1..{len(self.shards) - 1} shards, got {held_out}")
        return self.shards[:-held_out], self.shards[-held_out:]

    def __repr__(self) -> str:
        return f"ActivationStore({self.path}, {self.n_rows} rows, sites {self.sites})"


class JointStore:
    """Several stores harvested over the same tokens, read side by side (a crosscoder over two models).

    Keys are (store index, site) pairs; row r of every store is the same token, because the stores
    share their tokens, sequence length, sharding and dropped positions (checked on creation).

    Example::

        from mechscope.dictionaries import ActivationStore, JointStore
        joint = JointStore([ActivationStore("acts_a/"), ActivationStore("acts_b/")])
        xa, xb = joint.load([(0, "resid_post.2"), (1, "resid_post.2")])   # row-aligned (rows, d_model) each
    """

    def __init__(self, stores: Sequence[ActivationStore]):
        if len(stores) < 2:
            raise ValueError("a JointStore joins at least two stores")
        first = stores[0].manifest
        for st in stores[1:]:
            m = st.manifest
            same = (m["tokens"] == first["tokens"] and m["config"]["seqs_per_shard"] == first["config"]["seqs_per_shard"]
                    and m["config"]["drop_first"] == first["config"]["drop_first"])
            if not same:
                raise DictionaryFileError(f"{st.path} and {stores[0].path} were not harvested over the same tokens "
                                          "with the same sharding; their rows would not line up")
            if st.shards != stores[0].shards:
                raise DictionaryFileError(f"{st.path} and {stores[0].path} hold different shards")
        self.stores = list(stores)
        self.shards = list(stores[0].shards)

    def load(self, keys: Sequence[tuple[int, Site | str]], shards: Sequence[int] | None = None,
             dtype: torch.dtype = torch.float32) -> list[Tensor]:
        """One tensor per (store index, site) key, each from the same shards (default: all) and so row-aligned."""
        return [self.stores[i].load([k], shards, dtype)[0] for i, k in keys]

    def split(self, held_out: int) -> tuple[list[int], list[int]]:
        """(training shards, held-out shards): the first store's split, which holds for every store."""
        return self.stores[0].split(held_out)


class ShuffleBuffer:
    """Shuffled batches from a store, with at most `buffer_rows` rows (plus one shard) in memory.

    Steps: shards are visited in a seeded random order (a new order each pass); rows are added to
    a buffer until it holds `buffer_rows`; the buffer is permuted and its first half served as
    batches; the rest stays, mixed with the next shards. Yields a tuple with one float32 tensor
    (batch_size, width) per key (a JointStore's keys are (store index, site) pairs). With `loop`, passes repeat forever; otherwise the last rows are
    served in a final, possibly shorter, batch. Deterministic for a given seed.

    Example::

        from mechscope.dictionaries import ShuffleBuffer
        buf = ShuffleBuffer(store, ["resid_post.14"], 4096, shards=train_shards)
        x, = next(iter(buf))                     # (4096, d_model)
    """

    def __init__(self, store: "ActivationStore | JointStore", keys: Sequence[Any], batch_size: int, *,
                 buffer_rows: int = 1 << 16, shards: Sequence[int] | None = None, seed: int = 0,
                 loop: bool = True):
        if batch_size < 1 or buffer_rows < batch_size:
            raise ValueError(f"need 1 <= batch_size <= buffer_rows, got {batch_size} and {buffer_rows}")
        self.store, self.keys, self.batch_size = store, list(keys), batch_size
        self.buffer_rows, self.seed, self.loop = buffer_rows, seed, loop
        self.shards = store.shards if shards is None else list(shards)
        if not self.shards:
            raise ValueError("ShuffleBuffer needs at least one shard")

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        g = torch.Generator().manual_seed(self.seed)
        buf: list[Tensor] | None = None
        while True:
            for j in torch.randperm(len(self.shards), generator=g).tolist():
                part = self.store.load(self.keys, [self.shards[j]])
                buf = part if buf is None else [torch.cat([a, b]) for a, b in zip(buf, part)]
                while buf[0].shape[0] >= self.buffer_rows:
                    perm = torch.randperm(buf[0].shape[0], generator=g)
                    buf = [t[perm] for t in buf]
                    serve = (self.buffer_rows // 2 // self.batch_size) * self.batch_size or self.batch_size
                    for s in range(0, serve, self.batch_size):
                        yield tuple(t[s:s + self.batch_size] for t in buf)
                    buf = [t[serve:] for t in buf]
            if not self.loop:
                break
        if buf is not None and buf[0].shape[0]:
            perm = torch.randperm(buf[0].shape[0], generator=g)
            buf = [t[perm] for t in buf]
            for s in range(0, buf[0].shape[0], self.batch_size):
                yield tuple(t[s:s + self.batch_size] for t in buf)
