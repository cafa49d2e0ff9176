"""The real-server harness: discovery, cluster formation, node operations, no leaked process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from trio_cluster import ClusterClient
from trio_cluster.conn.connection import Connection
from trio_cluster.errors import AuthenticationError
from trio_cluster.testing import LocalCluster, LocalServer, ServerNotFoundError, find_server_binary
from trio_cluster.testing import servers as servers_module
from trio_cluster.testing.servers import parse_info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes only once reaped.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split()[2] != "Z"


def test_discovery_error_lists_the_three_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIO_CLUSTER_SERVER", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(servers_module, "bundled_server_binary", lambda: None)
    with pytest.raises(ServerNotFoundError) as info:
        find_server_binary()
    message = str(info.value)
    assert "TRIO_CLUSTER_SERVER" in message
    assert "PATH" in message
    assert "trio-cluster[server]" in message


def test_discovery_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("TRIO_CLUSTER_SERVER", str(fake))
    assert find_server_binary() == fake
    monkeypatch.setenv("TRIO_CLUSTER_SERVER", str(tmp_path / "missing"))
    with pytest.raises(ServerNotFoundError, match="missing"):
        find_server_binary()
    monkeypatch.delenv("TRIO_CLUSTER_SERVER")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "valkey-server").symlink_to(fake)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert find_server_binary() == bin_dir / "valkey-server"
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(servers_module, "bundled_server_binary", lambda: Path("/bundled"))
    assert find_server_binary() == Path("/bundled")


async def test_session_cluster_is_formed(local_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        slot_map = await local_cluster.slot_map()
        assert sum(r.end - r.start + 1 for r in slot_map) == 16384
        assert len(slot_map) == 3
        primaries = {r.primary for r in slot_map}
        assert primaries == {p.address for p in local_cluster.primaries}
        for slot_range in slot_map:
            assert len(slot_range.replicas) == 1
        for node in local_cluster.nodes:
            info = parse_info(await node.execute("CLUSTER", "INFO"))
            assert info["cluster_state"] == "ok"
            assert info["cluster_known_nodes"] == "6"
        roles = [parse_info(await n.execute("INFO", "replication"))["role"]
                 for n in local_cluster.nodes]  # fmt: skip
        assert sorted(roles) == ["master"] * 3 + ["slave"] * 3


def test_cluster_operations_and_no_process_left() -> None:
    """Failover, kill, pause/resume and restart on a private cluster; then nothing survives."""
    cluster = LocalCluster(masters=3, replicas_per_master=1, cluster_node_timeout_ms=1000)

    async def exercise() -> None:
        with trio.fail_after(60):
            await cluster.start()
            # Formed with a longer node timeout; the one asked for applies once it is ready.
            for node in cluster.nodes:
                reply = await node.execute("CONFIG", "GET", "cluster-node-timeout")
                assert reply == {b"cluster-node-timeout": b"1000"}
                assert node.cluster_node_timeout_ms == 1000
            shard = cluster.shards[0]
            old_primary, new_primary = shard.primary, shard.replicas[0]
            await cluster.failover(0)
            assert shard.primary is new_primary
            role = parse_info(await new_primary.execute("INFO", "replication"))["role"]
            assert role == "master"
            assert (await cluster.slot_map())[0].primary == new_primary.address

            await cluster.set_node_timeout(1500)
            for node in cluster.nodes:
                reply = await node.execute("CONFIG", "GET", "cluster-node-timeout")
                assert reply == {b"cluster-node-timeout": b"1500"}

            old_primary.pause()
            with trio.move_on_after(0.3) as scope:
                await old_primary.execute("PING", read_timeout=5)
            assert scope.cancelled_caught  # a paused server does not answer
            old_primary.resume()
            assert await old_primary.execute("PING") == b"PONG"

            victim = shard.replicas[0]
            pid = victim.pid
            assert pid is not None
            victim.kill()
            assert not victim.running and not _alive(pid)
            await cluster.restart(victim)
            assert victim.running and victim.pid != pid
            assert await victim.execute("PING") == b"PONG"

    try:
        trio.run(exercise)
    finally:
        cluster.close()
    pids = cluster.pids()
    assert len(pids) == 7  # six nodes and one restart
    assert not [pid for pid in pids if _alive(pid)]


def test_no_process_survives_an_error_in_the_body() -> None:
    cluster = LocalCluster(masters=1, replicas_per_master=1)
    with pytest.raises(ZeroDivisionError), cluster:
        assert all(_alive(pid) for pid in cluster.pids())
        1 / 0  # noqa: B018
    assert cluster.pids()
    assert not [pid for pid in cluster.pids() if _alive(pid)]


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from trio_cluster.testing import LocalCluster
    with LocalCluster(masters=1, replicas_per_master=1) as cluster:
        print(" ".join(map(str, cluster.pids())), flush=True)
        sys.stdin.readline()                      # the test checks the servers are up
        os.kill(os.getpid(), signal.SIGINT)       # KeyboardInterrupt inside the body
    """
)


@pytest.mark.parametrize("how", ["interrupt", "sigkill"])
def test_no_process_survives_its_parent(how: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    pids = [int(p) for p in child.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    if how == "sigkill":
        child.send_signal(signal.SIGKILL)  # no teardown code runs at all
    else:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    child.wait(timeout=30)
    assert child.returncode != 0
    for pid in pids:  # PR_SET_PDEATHSIG (or the teardown) ends them; give the kernel a moment
        for _ in range(500):
            if not _alive(pid):
                break
            trio.run(trio.sleep, 0.01)
        assert not _alive(pid)


def test_standalone_server_lifecycle() -> None:
    server = LocalServer()
    with server:
        pid = server.pid
        assert pid is not None and _alive(pid)
        assert trio.run(server.execute, "PING") == b"PONG"
    assert not server.running and not _alive(pid)
    assert not server.directory.exists()


async def test_password_protected_cluster_forms_and_replicates() -> None:
    """Every node requires the password; replicas authenticate to their primaries (their
    replication link is up); a client with the password works, one without is refused."""
    secret = "s3cret-harness"
    cluster = LocalCluster(masters=2, replicas_per_master=1, password=secret)
    try:
        with trio.fail_after(50):
            await cluster.start()
            for shard in cluster.shards:
                for replica in shard.replicas:
                    info = parse_info(await replica.execute("INFO", "replication"))
                    assert info["role"] == "slave"
                    assert info["master_link_status"] == "up"
            assert secret not in cluster.url(redacted=True)
            assert cluster.url(redacted=True).startswith("redis://:***@")
            async with ClusterClient.from_url(cluster.url()) as rc:
                assert await rc.execute_command("SET", "harness:pw", "v") is True
                assert await rc.execute_command("GET", "harness:pw") == b"v"
            with pytest.raises(AuthenticationError, match="NOAUTH"):
                await Connection.open(cluster.primaries[0].config(password=None))
    finally:
        cluster.close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_serve_keeps_the_cluster_up_until_interrupted() -> None:
    secret = "s3cret-serve"
    env = {**os.environ, "TRIO_CLUSTER_PASSWORD": secret}
    child = subprocess.Popen(
        [sys.executable, "-m", "trio_cluster.testing", "serve", "--masters", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("serving"):
            line = child.stdout.readline()
            assert line, f"serve ended early: {lines} {child.stderr.read() if child.stderr else ''}"
            lines.append(line.strip())
        out = "\n".join(lines)
        assert secret not in out
        url = next(ln for ln in lines if ln.startswith("URL: ")).removeprefix("URL: ")
        ports = [int(ln.split()[0].rsplit(":", 1)[1]) for ln in lines if ln.startswith("127.")]
        assert len(ports) == 2

        async def use() -> None:
            with trio.fail_after(20):
                async with ClusterClient.from_url(url.replace("***", secret)) as rc:
                    assert await rc.execute_command("SET", "serve:k", "1") is True

        trio.run(use)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0
        assert all(_refused(port) for port in ports)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
