"""Where keyed state lives: worker counts and balanced model-shard keys.

Bytewax 0.21 routes a stateful step's key to worker ``SipHash-1-3(key) % workers`` (Rust's
``DefaultHasher``: zero keys, the key's UTF-8 bytes then ``0xff``). With one model shard
per worker and arbitrary shard names, two shards can land on one worker and leave another
idle; :func:`shard_keys` picks names that map shard *i* to worker *i*.

>>> [worker_of(k, 4) for k in shard_keys(4)]
[0, 1, 2, 3]
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import Optional, Sequence

__all__ = ["process_count", "process_id", "recovery_enabled", "shard_keys", "total_workers", "under_bytewax_run", "worker_of"]

_M64 = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _M64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        rounds(1)
        v0 ^= m
    tail = int.from_bytes(data[end:], "little") | ((n & 0xFF) << 56)
    v3 ^= tail
    rounds(1)
    v0 ^= tail
    v2 ^= 0xFF
    rounds(3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker bytewax 0.21 sends ``key`` to in a stateful step."""
    return _siphash13(key.encode() + b"\xff") % workers


@lru_cache(maxsize=None)
def shard_keys(shards: int, workers: Optional[int] = None) -> tuple[str, ...]:
    """Names for ``shards`` model shards, shard ``i`` routed to worker ``i % workers``.

    The flow names its shards for ``workers == shards`` whatever the cluster's size, so the
    names (and the models recovered under them) survive rescaling; with as many workers as
    shards, each worker holds one.
    """
    workers = workers or shards
    keys = []
    for i in range(shards):
        j = 0
        while worker_of(f"shard-{i}.{j}", workers) != i % workers:
            j += 1
        keys.append(f"shard-{i}.{j}")
    return tuple(keys)


def total_workers(argv: Sequence[str] = tuple(sys.argv), environ=os.environ) -> int:
    """Workers in the cluster this process belongs to, from ``python -m bytewax.run``'s
    arguments (``-w``, ``-a``) or their ``BYTEWAX_*`` variables; 1 when not under it."""
    per_process = environ.get("BYTEWAX_WORKERS_PER_PROCESS")
    addresses = environ.get("BYTEWAX_ADDRESSES")
    args = list(argv)
    for i, arg in enumerate(args):
        value = args[i + 1] if i + 1 < len(args) else None
        if arg in ("-w", "--workers-per-process") and value:
            per_process = value
        elif arg.startswith("--workers-per-process="):
            per_process = arg.split("=", 1)[1]
        elif arg.startswith("-w") and arg[2:].isdigit():
            per_process = arg[2:]
        elif arg in ("-a", "--addresses") and value:
            addresses = value
        elif arg.startswith("--addresses="):
            addresses = arg.split("=", 1)[1]
    if addresses is None and environ.get("BYTEWAX_HOSTFILE_PATH"):
        try:
            with open(environ["BYTEWAX_HOSTFILE_PATH"]) as fh:
                addresses = ";".join(line.strip() for line in fh if line.strip())
        except OSError:
            addresses = None
    try:
        w = max(1, int(per_process)) if per_process else 1
    except ValueError:
        w = 1
    n_proc = len([a for a in addresses.split(";") if a.strip()]) if addresses else 1
    return w * max(1, n_proc)


def _arg_value(argv: Sequence[str], short: str, long: str) -> Optional[str]:
    args = list(argv)
    for i, arg in enumerate(args):
        if arg in (short, long) and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
        if arg.startswith(short) and len(arg) > len(short) and not arg.startswith("--"):
            return arg[len(short):]
    return None


def process_count(argv: Sequence[str] = tuple(sys.argv), environ=os.environ) -> int:
    """Processes in the cluster (``-a`` / ``BYTEWAX_ADDRESSES`` / hostfile), 1 alone."""
    addresses = _arg_value(argv, "-a", "--addresses") or environ.get("BYTEWAX_ADDRESSES")
    if addresses is None and environ.get("BYTEWAX_HOSTFILE_PATH"):
        try:
            with open(environ["BYTEWAX_HOSTFILE_PATH"]) as fh:
                addresses = ";".join(line.strip() for line in fh if line.strip())
        except OSError:
            addresses = None
    return max(1, len([a for a in addresses.split(";") if a.strip()])) if addresses else 1


def process_id(argv: Sequence[str] = tuple(sys.argv), environ=os.environ) -> int:
    """This process's id in the cluster (``-i`` / ``BYTEWAX_PROCESS_ID`` / pod ordinal), 0 alone."""
    value = _arg_value(argv, "-i", "--process-id") or environ.get("BYTEWAX_PROCESS_ID")
    if value is None and "BYTEWAX_POD_NAME" in environ and "BYTEWAX_STATEFULSET_NAME" in environ:
        value = environ["BYTEWAX_POD_NAME"].replace(environ["BYTEWAX_STATEFULSET_NAME"] + "-", "")
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def recovery_directory(argv: Sequence[str] = tuple(sys.argv), environ=os.environ) -> Optional[str]:
    """The recovery directory this run resumes from and writes (``-r``), if any."""
    return _arg_value(argv, "-r", "--recovery-directory") or environ.get("BYTEWAX_RECOVERY_DIRECTORY") or None


def recovery_enabled(argv: Sequence[str] = tuple(sys.argv), environ=os.environ) -> bool:
    """Whether this run resumes from (and writes) recovery partitions (``-r``)."""
    return recovery_directory(argv, environ) is not None


def under_bytewax_run(argv: Sequence[str] = tuple(sys.argv)) -> bool:
    return bool(argv) and argv[0].replace("\\", "/").endswith("bytewax/run.py")
