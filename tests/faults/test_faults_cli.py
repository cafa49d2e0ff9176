# ruff: noqa: E501 -- the transcript is recorded verbatim from the Go CLI
"""``trio-cluster-faults cli``: toxiproxy-cli's verbs, flags, output and errors.

One scripted session runs with our CLI against the server under test (embedded or Go) and
must print exactly what Go's ``toxiproxy-cli`` 2.12.0 printed for it (the transcript below was
recorded from it).  When the Go CLI binary is at hand it runs the same session too, so the
transcript stays honest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from faults_helpers import HERE, REAL_CLI, Backend, deadline

from trio_cluster.faults import Toxiproxy

_SHARED_CLI = Path(HERE).parents[2] / "shared" / "tools" / "toxiproxy-2.12.0" / "toxiproxy-cli"
GO_CLI = REAL_CLI if REAL_CLI and Path(REAL_CLI).exists() else None
if GO_CLI is None and _SHARED_CLI.exists():
    GO_CLI = str(_SHARED_CLI)

# (arguments, exit status, stdout, stderr) as Go's CLI printed them; "{up}" is the backend's
# address, ADDR any 127.0.0.1 address; stdout None: Go's help text (ours is argparse's).
# Commands give their flags first, as urfave/cli wants them.
SESSION: list[tuple[list[str], int, str | None, str]] = [
    (["list"], 0, "", ""),
    (["create", "-l", "127.0.0.1:0", "-u", "{up}", "p1"], 0, "Created new proxy p1\n", ""),
    (["create", "-l", "127.0.0.1:0", "p2"], 1, None, "Required argument 'upstream' was empty.\n\n"),
    (
        ["create", "-l", "127.0.0.1:0", "-u", "{up}", "p1"],
        1,
        "",
        "Failed to create proxy: Create: HTTP 409: proxy already exists\n\n",
    ),
    (["list"], 0, "p1\tADDR\tADDR\tenabled\t0\n", ""),
    (
        ["toxic", "add", "-t", "latency", "-a", "latency=100", "-a", "jitter=5", "p1"],
        0,
        "Added downstream latency toxic 'latency_downstream' on proxy 'p1'\n",
        "",
    ),
    (
        [
            "toxic",
            "add",
            "-t",
            "bandwidth",
            "-u",
            "-n",
            "bw",
            "--tox",
            "0.5",
            "-a",
            "rate=1000",
            "p1",
        ],
        0,
        "Added upstream bandwidth toxic 'bw' on proxy 'p1'\n",
        "",
    ),
    (
        ["toxic", "add", "-t", "bogus", "p1"],
        1,
        "",
        "Failed to add toxic: failed to add toxic to proxy p1: AddToxic: HTTP 400: invalid toxic type\n\n",
    ),
    (
        ["toxic", "add", "-t", "latency", "--upstream", "--downstream", "p1"],
        1,
        "",
        "Only one should be specified: upstream or downstream.\n\n",
    ),
    (
        ["toxic", "add", "-t", "latency", "p1"],
        1,
        "",
        "Failed to add toxic: failed to add toxic to proxy p1: AddToxic: HTTP 409: toxic already exists\n\n",
    ),
    (
        ["inspect", "p1"],
        0,
        "bw\ttype=bandwidth\tstream=upstream\ttoxicity=0.50\tattributes=[\trate=1000\t]\nlatency_downstream\ttype=latency\tstream=downstream\ttoxicity=1.00\tattributes=[\tjitter=5\tlatency=100\t]\n",
        "",
    ),
    (
        ["toxic", "update", "-n", "latency_downstream", "-a", "latency=250", "p1"],
        0,
        "Updated toxic 'latency_downstream' on proxy 'p1'\n",
        "",
    ),
    (
        ["toxic", "update", "-n", "nope", "-a", "latency=1", "p1"],
        1,
        "",
        "Failed to update toxic: failed to update toxic 'nope' of proxy 'p1': HTTP 404: toxic not found\n\n",
    ),
    (
        ["inspect", "p1"],
        0,
        "bw\ttype=bandwidth\tstream=upstream\ttoxicity=0.50\tattributes=[\trate=1000\t]\nlatency_downstream\ttype=latency\tstream=downstream\ttoxicity=1.00\tattributes=[\tjitter=5\tlatency=250\t]\n",
        "",
    ),
    (["toxic", "remove", "-n", "bw", "p1"], 0, "Removed toxic 'bw' on proxy 'p1'\n", ""),
    (
        ["toxic", "remove", "-n", "bw", "p1"],
        1,
        "",
        "Failed to remove toxic: failed to remove toxic 'bw' from proxy 'p1': HTTP 404: toxic not found\n\n",
    ),
    (["toggle", "p1"], 0, "Proxy p1 is now disabled\n", ""),
    (["list"], 0, "p1\tADDR\tADDR\tdisabled\t1\n", ""),
    (["toggle", "p1"], 0, "Proxy p1 is now enabled\n", ""),
    (["inspect", "nope"], 1, "", "Failed to retrieve proxy nope: HTTP 404: proxy not found\n\n"),
    (["toggle", "nope"], 1, "", "Failed to retrieve proxy nope: HTTP 404: proxy not found\n\n"),
    (["delete", "nope"], 1, "", "Failed to retrieve proxy nope: HTTP 404: proxy not found\n\n"),
    (
        ["toxic", "add", "-t", "latency", "nope"],
        1,
        "",
        "Failed to add toxic: failed to retrieve proxy with name `nope`: HTTP 404: proxy not found\n\n",
    ),
    (
        ["toxic", "add", "-t", "slow_close", "--tox", "2", "p1"],
        1,
        "",
        "toxicity should be a float between 0 and 1.\n\n",
    ),
    (["toxic", "add", "-a", "latency=1", "p1"], 1, None, "Required argument 'type' was empty.\n\n"),
    (["delete", "p1"], 0, "Deleted proxy p1\n", ""),
    (["list"], 0, "", ""),
    (["inspect"], 1, None, "Proxy name is required as the first argument.\n\n"),
    (["ls"], 0, "", ""),
    (
        ["t", "a", "-t", "timeout", "-n", "x", "p1"],
        1,
        "",
        "Failed to add toxic: failed to retrieve proxy with name `p1`: HTTP 404: proxy not found\n\n",
    ),
]


def _normalise(text: str) -> str:
    return re.sub(r"127\.0\.0\.1:\d+", "ADDR", text)


#: Seconds a session of CLI processes may take (see its tests).
CLI_SESSION_DEADLINE = 240


async def _run(command: list[str], url: str, args: list[str]) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(HERE).parents[1])}
    env.pop("TOXIPROXY_URL", None)
    result = await trio.run_process(
        [*command, "-h", url, *args], capture_stdout=True, capture_stderr=True, check=False, env=env
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def _session(command: list[str], url: str, backend: Backend) -> None:
    for args, status, stdout, stderr in SESSION:
        args = [a.replace("{up}", backend.address) for a in args]
        got_status, got_stdout, got_stderr = await _run(command, url, args)
        assert (got_status, got_stderr) == (status, stderr), args
        if stdout is None:
            assert got_stdout.strip(), args  # the command's help
        else:
            assert _normalise(got_stdout) == stdout, args


# 40 CLI processes, each starting Python and importing trio_cluster (about a second of CPU
# each): a bound against a hang, not a speed check; a machine busy with four other processes
# took more than 50 s.
@deadline(CLI_SESSION_DEADLINE)
@pytest.mark.timeout(CLI_SESSION_DEADLINE + 20)
async def test_cli_session_prints_what_go_cli_prints(toxi: Toxiproxy, backend: Backend) -> None:
    await _session([sys.executable, "-m", "trio_cluster.faults", "cli"], toxi.url, backend)


@pytest.mark.skipif(GO_CLI is None, reason="the Go toxiproxy-cli binary is not at hand")
@deadline(CLI_SESSION_DEADLINE)
@pytest.mark.timeout(CLI_SESSION_DEADLINE + 20)
async def test_go_cli_session_matches_the_transcript(toxi: Toxiproxy, backend: Backend) -> None:
    assert GO_CLI is not None
    await _session([GO_CLI], toxi.url, backend)


async def test_cli_reports_an_unreachable_server() -> None:
    status, stdout, stderr = await _run(
        [sys.executable, "-m", "trio_cluster.faults", "cli"], "http://127.0.0.1:1", ["list"]
    )
    assert (status, stdout) == (1, "")
    assert stderr == (
        'Failed to retrieve proxies: fail to request: Get "http://127.0.0.1:1/proxies": '
        "dial tcp 127.0.0.1:1: connect: connection refused\n"
    )


async def test_cli_reports_an_answer_that_is_not_toxiproxys(toxi: Toxiproxy) -> None:
    # A path the server does not serve: its plain-text 404 is not an API error body.
    commands = [
        [sys.executable, "-m", "trio_cluster.faults", "cli"],
        *([[GO_CLI]] if GO_CLI else []),
    ]
    for command in commands:
        status, stdout, stderr = await _run(command, toxi.url + "/elsewhere", ["list"])
        assert (status, stdout, stderr) == (
            1,
            "",
            "Failed to retrieve proxies: json: cannot unmarshal number into Go value of type "
            "toxiproxy.ApiError\n",
        ), command


def _in_a_terminal(command: list[str]) -> bytes:
    """Run ``command`` with its stdout on a pseudo-terminal (Go colours only a terminal)."""
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(HERE).parents[1])}
    proc = subprocess.Popen(
        command, stdout=follower, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env
    )
    os.close(follower)
    out = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the terminal closed with the process
            break
        if not data:
            break
        out += data
    proc.wait()
    os.close(leader)
    return re.sub(rb"127\.0\.0\.1:\d+", b"ADDR", out)


_HEADER = (
    b"\x1b[32mName\t\t\t\x1b[34mListen\t\t\x1b[33mUpstream\t\t\x1b[35mEnabled\t\t\x1b[31mToxics"
    b"\r\n\x1b[0m\x1b[0m" + b"=" * 86 + b"\r\n"
)
# (arguments, what Go's CLI printed on a terminal), recorded from toxiproxy-cli 2.12.0.
TTY_SESSION: list[tuple[list[str], bytes]] = [
    (
        ["list"],
        _HEADER + b"\x1b[31mno proxies\r\n\x1b[0m\r\n\x1b[0mHint: create a proxy with "
        b"`toxiproxy-cli create`\r\n",
    ),
    (["create", "-l", "127.0.0.1:0", "-u", "{up}", "p1"], b"Created new proxy p1\r\n"),
    (
        ["inspect", "p1"],
        b"\x1b[35mName: \x1b[0mp1\t\x1b[34mListen: \x1b[0mADDR\t\x1b[33mUpstream: \x1b[0mADDR"
        b"\r\n\x1b[0m" + b"=" * 70 + b"\r\n\x1b[31mProxy has no toxics enabled.\r\n\x1b[0m\r\n"
        b"\x1b[0mHint: add a toxic with `toxiproxy-cli toxic add`\r\n",
    ),
    (
        ["toxic", "add", "-t", "latency", "-a", "latency=5", "p1"],
        b"Added downstream latency toxic 'latency_downstream' on proxy 'p1'\r\n",
    ),
    (
        ["toxic", "add", "-t", "bandwidth", "-u", "-a", "rate=5", "p1"],
        b"Added upstream bandwidth toxic 'bandwidth_upstream' on proxy 'p1'\r\n",
    ),
    (
        ["list"],
        _HEADER + b"\x1b[32mp1\x1b[0m\t\t\t\x1b[34mADDR\x1b[0m\t\x1b[33mADDR\x1b[0m\t\t"
        b"\x1b[35menabled\x1b[0m\t\t\x1b[31m2\x1b[0m\r\n\r\n\x1b[0mHint: inspect toxics with "
        b"`toxiproxy-cli inspect <proxyName>`\r\n",
    ),
    (
        ["inspect", "p1"],
        b"\x1b[35mName: \x1b[0mp1\t\x1b[34mListen: \x1b[0mADDR\t\x1b[33mUpstream: \x1b[0mADDR"
        b"\r\n\x1b[0m" + b"=" * 70 + b"\r\n\x1b[32mUpstream toxics:\r\n\x1b[0m\x1b[34m"
        b"bandwidth_upstream:\x1b[0m\ttype=bandwidth\tstream=upstream\ttoxicity=1.00\t"
        b"attributes=[\trate=5\t]\r\n\r\n\x1b[32mDownstream toxics:\r\n\x1b[0m\x1b[34m"
        b"latency_downstream:\x1b[0m\ttype=latency\tstream=downstream\ttoxicity=1.00\t"
        b"attributes=[\tjitter=0\tlatency=5\t]\r\n\r\n\x1b[0mHint: add a toxic with "
        b"`toxiproxy-cli toxic add`\r\n",
    ),
    (["toggle", "p1"], b"Proxy \x1b[31mp1\x1b[0m is now \x1b[31mdisabled\x1b[0m\r\n"),
]


async def _tty_session(command: list[str], url: str, backend: Backend) -> None:
    for args, expected in TTY_SESSION:
        args = [a.replace("{up}", backend.address) for a in args]
        got = await trio.to_thread.run_sync(_in_a_terminal, [*command, "-h", url, *args])
        assert got == expected, args


@deadline(CLI_SESSION_DEADLINE)  # a CLI process per step, as above
@pytest.mark.timeout(CLI_SESSION_DEADLINE + 20)
async def test_cli_on_a_terminal_prints_what_go_cli_prints(
    toxi: Toxiproxy, backend: Backend
) -> None:
    await _tty_session([sys.executable, "-m", "trio_cluster.faults", "cli"], toxi.url, backend)


@pytest.mark.skipif(GO_CLI is None, reason="the Go toxiproxy-cli binary is not at hand")
async def test_go_cli_on_a_terminal_matches_the_transcript(
    toxi: Toxiproxy, backend: Backend
) -> None:
    assert GO_CLI is not None
    await _tty_session([GO_CLI], toxi.url, backend)
