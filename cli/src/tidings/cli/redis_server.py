"""A private `redis-server` child process, for `tidings dev` and tests.

AOF on (as production runs it), bound to loopback on a free port, its data in
a directory of the caller's choosing so events survive a restart of
`tidings dev`. The child dies with its parent on Linux (PR_SET_PDEATHSIG), so
a SIGKILLed `tidings dev` leaves no stray server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

INSTALL_HINT = (
    "redis-server (Redis >= 7) was not found on PATH. Install it "
    "(Debian/Ubuntu: `sudo apt-get install redis-server`, macOS: `brew install redis`) "
    "or point REDIS_URL at a Redis you run yourself."
)


class RedisServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RedisServer:
    def __init__(
        self,
        directory: Path,
        *,
        port: int = 0,
        binary: str = "redis-server",
        appendonly: bool = True,
        extra_args: list[str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.port = port
        self.binary = binary
        self.appendonly = appendonly
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def available(binary: str = "redis-server") -> bool:
        return shutil.which(binary) is not None

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        if not self.available(self.binary):
            raise RedisServerError(INSTALL_HINT)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--logfile",
            "redis.log",
            *self.extra_args,
        ]
        with open(self.directory / "redis.stderr", "ab") as stderr:
            self.process = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = ""
                for name in ("redis.stderr", "redis.log"):
                    log = self.directory / name
                    tail += log.read_text()[-1000:] if log.exists() else ""
                raise RedisServerError(f"redis-server exited at start ({self.directory}):\n{tail}")
            if self.ping():
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes the AOF and exits), SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: for tests of what happens when Redis vanishes."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
