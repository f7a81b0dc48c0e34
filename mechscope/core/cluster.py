"""Connecting to Ray (the optional `distributed` extra): a local instance or a cluster's address.

`ray_session(address, num_cpus)` yields with Ray initialised: it reuses a Ray the caller already
started (tests share one per module), else joins the cluster at `address` (host:port of its head,
checked to accept connections first so that a wrong address fails in seconds with a clear message)
or starts a local instance with `num_cpus` CPUs, and shuts down only what it started.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def require_ray() -> Any:
    """The `ray` module, or an error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("this needs Ray: pip install 'mechscope[distributed]'") from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError unless something accepts TCP connections at `address` (host:port,
    optionally with a ray:// prefix); "auto" and "local" are left to Ray."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379, or ray://host:10001)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers at {address} ({e}); start one there with "
                              "`ray start --head --port PORT`, or check the address and the firewall") from None


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, initialised for the duration of the block (see the module docstring)."""
    ray = require_ray()
    if address is not None:
        check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    if address is not None:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
