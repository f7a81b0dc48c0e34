"""Data-parallel dictionary training over torch.distributed: `torchrun --nproc-per-node N -m mechscope.dictionaries.train`.

Steps of `main` (one process per rank; torchrun sets RANK, WORLD_SIZE and the rendezvous):
1. join the process group: gloo on CPU, NCCL on CUDA (the backend follows `--device`; on CUDA
   each rank takes the GPU of its LOCAL_RANK);
2. open the store; its training shards (all but the last `--held-out-shards`) are dealt to the
   ranks, rank r reading shards r, r + N, ... (`rank_batches`): the number of ranks must divide
   the number of training shards, and the global batch must split equally;
3. build the dictionary from the same seed on every rank and `train` it with a `ProcessGroupReducer`
   (gradients averaged after every backward pass, each rank updating its shard of the parameters,
   see `train` and `shards`: through shared memory when every rank is on this host's CPU, else by
   the process group's all-reduce and all-gather, `--all-reduce` forces it; see `exchange`) and a
   checkpoint every `--checkpoint-every` steps, written by rank 0 (Adam's moments gathered whole);
   a run started again with the same arguments resumes from it;
4. rank 0 writes the dictionary (SAELens layout) and train.json to `--out`.
A rank that dies makes the others fail in their next collective operation (or be stopped by
torchrun); each prints which rank it is, that the job stopped, and the checkpoint to resume from.
Run without torchrun, it trains in one process; with `--streams N` on the global batches an N-rank
run trains on (each rank's slice, concatenated), so its dictionary can be compared with that run's.
train.json records `collective_seconds`: the time rank 0 spent in (or waiting for) exchanges, and
`gradient_exchange` ("shared memory" or "all-reduce").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.files import remove_partial_writes
from .checkpoint import Checkpointing
from .base import Dictionary
from .exchange import SharedMemory, ShardedExchange
from .files import DictionaryFileError, read_meta, write_json
from .registry import build
from .saelens import save
from .shards import ShardedAdam, Shards
from .store import ActivationStore, ShuffleBuffer
from .train import Reducer, TrainConfig, train


class ProcessGroupReducer(Reducer):
    """A `Reducer` over the default torch.distributed process group; tensors travel on `device`.

    Each rank updates its shard of the parameters (ZeRO stage 1, see `shards`): gradients go into
    one flat bucket during the backward pass, each rank sums its pieces of it and updates them, and
    the ranks exchange the updated pieces (`attach`, see `exchange`); with `shared_memory` and every
    rank on this host's CPU, through shared memory, else by an all-reduce and an all-gather."""

    def __init__(self, device: torch.device, shared_memory: bool = True):
        import torch.distributed as dist

        self.dist, self.device = dist, device
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.seconds = 0.0  # time this rank spent in (or waiting for) gradient, parameter and statistics exchanges
        self.shared_memory = shared_memory  # exchange through shared memory when all ranks are on this CPU
        self.exchange: ShardedExchange | None = None
        self.uses_shared_memory = False

    def gather(self, t: Tensor) -> Tensor:
        """Every rank's `t`, concatenated along rows in rank order."""
        t = t.to(self.device).contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(parts, t)
        return torch.cat(parts)

    def attach(self, dictionary: Dictionary, opt: torch.optim.Adam) -> tuple[ShardedAdam, Callable[[], None]]:
        """Share out the parameters `opt` trains (`shards.Shards`, the decoder by rows), give their gradients one
        flat bucket the backward pass writes into (see `exchange`: in shared memory when every rank is
        on this host's CPU, else summed by an all-reduce), and return the optimizer of this rank's
        pieces (`ShardedAdam`, taking over `opt`'s state) and the function that ends the exchange."""
        params = [p for g in opt.param_groups for p in g["params"]]
        shards = Shards(params, dictionary.W_dec, self.world)
        numel = sum(p.numel() for p in params)
        here = (self.shared_memory and self.device.type == "cpu"
                and os.environ.get("LOCAL_WORLD_SIZE") == str(self.world)
                and SharedMemory.fits(numel, params[0].dtype, self.world))
        agree = torch.tensor([int(here)], device=self.device)
        self.dist.all_reduce(agree, op=self.dist.ReduceOp.MIN)  # every rank takes the same way
        shared = bool(agree)
        self.exchange = ShardedExchange(params, shards, self.rank, self.world, shared=shared,
                                        all_reduce=self.dist.all_reduce, gather=self.gather,
                                        barrier=self.dist.barrier, share=self._share)
        self.uses_shared_memory = shared

        def detach() -> None:
            self.exchange.close()
            self.exchange = None
        return ShardedAdam(opt, shards, self.rank, self.gather), detach

    def _share(self, text: str) -> str:
        """Rank 0's `text` (up to 255 bytes), on every rank."""
        raw = text.encode()
        if len(raw) > 255:
            raise ValueError(f"cannot share {len(raw)} bytes (at most 255): {text[:80]}...")
        buf = torch.zeros(256, dtype=torch.uint8, device=self.device)
        if self.rank == 0:
            buf[0] = len(raw)
            buf[1:1 + len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
        self.dist.broadcast(buf, 0)
        n = int(buf[0])
        return bytes(buf[1:1 + n].tolist()).decode()

    def step(self, dictionary: Dictionary, opt: Any) -> None:
        """After the backward pass: sum this rank's pieces of the gradients, update them (parallel
        gradient removal, Adam, decoder norms, on this rank's latents), then take every rank's updates
        (`ShardedExchange.step`)."""
        if self.exchange is None:
            raise RuntimeError("ProcessGroupReducer.step: call attach(dictionary, opt) before the first backward pass")
        self.seconds += self.exchange.step(dictionary, opt)

    def any(self, mask: Tensor) -> Tensor:
        """True where any rank has True."""
        m = mask.to(self.device, torch.float32)
        self.dist.all_reduce(m, op=self.dist.ReduceOp.MAX)
        return m > 0

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return float(t) / self.world

    def start_step_stats(self, fired: Tensor, l0: float) -> Callable[[], tuple[Tensor, float]]:
        """One asynchronous all-reduce (a sum) of the fired mask and L0 together; the returned function waits."""
        packed = torch.cat([fired.to(self.device, torch.float64).reshape(-1),
                            torch.tensor([l0], dtype=torch.float64, device=self.device)])
        work = self.dist.all_reduce(packed, async_op=True)

        def wait() -> tuple[Tensor, float]:
            t = time.perf_counter()
            work.wait()
            self.seconds += time.perf_counter() - t
            return packed[:-1] > 0, float(packed[-1]) / self.world

        return wait

    def barrier(self) -> None:
        """Wait until every rank is here."""
        self.dist.barrier()


def rank_batches(store: ActivationStore, keys: list[str], batch_size: int, rank: int, world: int,
                 shards: list[int] | None = None, seed: int = 0, buffer_rows: int = 1 << 16) -> ShuffleBuffer:
    """Rank `rank`'s slice of every global batch of `batch_size` rows: shuffled batches of
    batch_size / world rows from its shards (every world-th training shard, from its rank on)."""
    shards = store.shards if shards is None else list(shards)
    if len(shards) % world:
        fits = [w for w in range(1, len(shards) + 1) if len(shards) % w == 0]
        raise ValueError(f"{store.path} has {len(shards)} training shards, which {world} processes cannot share "
                         f"equally; use a number of processes that divides {len(shards)} ({fits}), or harvest "
                         "with another seqs_per_shard")
    if batch_size % world:
        raise ValueError(f"the batch of {batch_size} rows cannot be split equally over {world} processes")
    return ShuffleBuffer(store, keys, batch_size // world, buffer_rows=buffer_rows, shards=shards[rank::world],
                         seed=seed + rank)


def merged_batches(store: ActivationStore, keys: list[str], batch_size: int, streams: int,
                   shards: list[int] | None = None, seed: int = 0, buffer_rows: int = 1 << 16
                   ) -> Iterator[tuple[Tensor, ...]]:
    """In one process, the global batches that `streams` ranks train on together: each rank's
    `rank_batches` slice, concatenated in rank order. Trained on these, one process gets the
    dictionary of a `streams`-rank run (up to the order of floating-point sums)."""
    parts = [rank_batches(store, keys, batch_size, r, streams, shards, seed, buffer_rows) for r in range(streams)]
    return (tuple(torch.cat(cols) for cols in zip(*slices)) for slices in zip(*parts))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mechscope.dictionaries.train",
                                 description="Train a dictionary on an activation store, data-parallel under torchrun.")
    ap.add_argument("--store", type=Path, required=True, help="a finished activation store")
    ap.add_argument("--out", type=Path, required=True, help="directory for the dictionary and train.json")
    ap.add_argument("--site", help="the input site (default: the store's first)")
    ap.add_argument("--site-out", help="a transcoder's target site")
    ap.add_argument("--arch", default="topk", help="relu, topk, batchtopk, jumprelu or transcoder")
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("-k", type=int, default=32, help="active latents (topk, batchtopk, transcoder)")
    ap.add_argument("--tokens", type=int, required=True, help="training rows, all processes together")
    ap.add_argument("--batch", type=int, default=4096, help="global batch (rows, all processes together)")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--held-out-shards", type=int, default=0, help="last shards kept out of training")
    ap.add_argument("--buffer-rows", type=int, default=1 << 16, help="shuffle buffer of each process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--streams", type=int, help="read the store as this many ranks do (default: the number of "
                    "processes); one process with --streams N trains on the global batches of an N-rank run")
    ap.add_argument("--checkpoint", type=Path, help="checkpoint file (default OUT/checkpoint.safetensors)")
    ap.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    ap.add_argument("--device", help="cpu, cuda or cuda:N (default: each rank's GPU when there is one, else cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a collective waits for the other processes")
    ap.add_argument("--all-reduce", action="store_true", help="exchange gradients and parameters with the process "
                    "group's all-reduce and all-gather even when every rank is on this host's CPU (there the "
                    "default is shared memory)")
    return ap


def init_process_group(device: str | None = None, timeout: float = 300, shared_memory: bool = True
                       ) -> tuple[ProcessGroupReducer, torch.device]:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); the reducer and this rank's device
    (`shared_memory`: see `ProcessGroupReducer`)."""
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ:
        raise RuntimeError("data-parallel training runs under torchrun, which starts one process per rank: "
                           "torchrun --nproc-per-node N -m mechscope.cli dict train ... --ddp")
    dev = _device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
    return ProcessGroupReducer(dev, shared_memory), dev


def _device(arg: str | None) -> torch.device:
    local = int(os.environ.get("LOCAL_RANK", 0))
    if arg is None:
        return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(arg)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local}")
    return dev


def _checkpoint_step(checkpoint: Path) -> str:
    """"step N in PATH" of a checkpoint file, or why there is none."""
    if not checkpoint.is_file():
        return "none yet"
    try:
        return f"step {json.loads(read_meta(checkpoint)['state'])['step']} in {checkpoint}"
    except (DictionaryFileError, KeyError, ValueError):
        return f"{checkpoint} (unreadable)"


def _stopped(rank: int, world: int, checkpoint: Path, why: str) -> str:
    return (f"mechscope train: rank {rank} of {world} stopped: {why}. The job cannot go on with a process "
            f"missing. Last checkpoint: {_checkpoint_step(checkpoint)}; run the same command again to resume "
            "from it.")


def main(argv: list[str] | None = None) -> int:
    """Train a dictionary as one rank of a torchrun launch (steps in the module docstring); returns the exit
    code."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = _device(args.device)
    checkpoint = args.checkpoint or args.out / "checkpoint.safetensors"
    store = ActivationStore(args.store)
    shards = store.shards[:-args.held_out_shards] if args.held_out_shards else store.shards
    site = args.site or store.sites[0]
    keys = [site] + ([args.site_out] if args.site_out else [])
    streams = args.streams or world
    if world > 1 and streams != world:
        raise SystemExit(f"--streams {streams} under torchrun with {world} processes: each process reads one "
                         "stream, so leave --streams out (it is for one process replaying an N-rank run)")
    if world > 1 or streams == 1:
        batches: Any = rank_batches(store, keys, args.batch, rank, world, shards, args.seed, args.buffer_rows)
    else:
        batches = merged_batches(store, keys, args.batch, streams, shards, args.seed, args.buffer_rows)
    reducer: Reducer | None = None
    if world > 1:
        reducer, device = init_process_group(args.device, args.timeout, shared_memory=not args.all_reduce)

    def on_term(signum: int, frame: Any) -> None:  # torchrun stops the others when one rank fails
        print(_stopped(rank, world, checkpoint, "the launcher stopped it (another rank failed)"), file=sys.stderr,
              flush=True)
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    if rank == 0:  # the temporary file of a checkpoint write that a kill interrupted
        remove_partial_writes(checkpoint.parent)
        if checkpoint.is_file():
            print(f"mechscope train: resuming from {_checkpoint_step(checkpoint)}", file=sys.stderr, flush=True)
    fields: dict[str, Any] = {"d_in": store.widths[store._key(site)], "d_sae": args.d_sae, "seed": args.seed,
                              "site": store._key(site), "model": store.manifest.get("model")}
    if args.arch in ("topk", "batchtopk", "transcoder"):
        fields["k"] = args.k
    if args.site_out:
        fields |= {"d_out": store.widths[store._key(args.site_out)], "site_out": store._key(args.site_out)}
    dictionary = build(args.arch, **fields).to(device)
    config = TrainConfig(tokens=args.tokens, batch_size=args.batch, lr=args.lr, seed=args.seed)
    on_device = (tuple(t.to(device) for t in b) for b in batches)
    try:
        result = train(dictionary, on_device, config, reducer=reducer, progress=rank == 0 and sys.stderr.isatty(),
                       checkpointing=Checkpointing(checkpoint, args.checkpoint_every))
    except RuntimeError as e:  # gloo/NCCL: a peer closed its connection or timed out
        if world == 1:
            raise
        print(_stopped(rank, world, checkpoint, f"lost contact with another rank "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:200]})"), file=sys.stderr, flush=True)
        return 1
    if rank == 0:
        save(dictionary, args.out)
        comm = reducer.seconds if isinstance(reducer, ProcessGroupReducer) else 0.0
        exchange = ("shared memory" if reducer.uses_shared_memory else "all-reduce") \
            if isinstance(reducer, ProcessGroupReducer) else None
        write_json(args.out / "train.json", {**result.describe(), "world": world, "streams": streams,
                                             "device": str(device), "store": str(args.store),
                                             "collective_seconds": comm, "gradient_exchange": exchange,
                                             "curve": result.curve})
        print(f"mechscope train: {result.tokens:,} rows in {result.seconds:.1f} s on {world} process(es): "
              f"{args.out}", file=sys.stderr)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0
