"""`make broker` (python -m connectors.broker): a signal to the wrapper stops tansu too."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from connectors.broker import free_port

pytestmark = pytest.mark.broker


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_wrapper_stops_the_broker(sig):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "connectors.broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "tansu broker on" in proc.stdout.readline()
        assert _listening(port)
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        deadline = time.monotonic() + 10
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _listening(port), "tansu still listens after its wrapper stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
