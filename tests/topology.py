"""Real Redis topologies on loopback for tests and benchmarks: a Cluster, or a primary with a replica
watched by three sentinels. Every server is its own ``redis-server`` process in a temporary directory.

    python -m tests.topology cluster --primaries 3 --replicas 0     # prints the redis+cluster:// URL, waits

Cluster slots are assigned with ``CLUSTER ADDSLOTSRANGE``/``MEET``/``REPLICATE`` (what ``redis-cli
--cluster create`` sends), so only ``redis-server`` is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tasks_engine.integrations.embedded import server_binary

SLOTS = 16384


def redis_binary() -> str:
    """A Redis 7 from the system when there is one (ADDSLOTSRANGE, WAIT semantics), else the embedded one."""
    return shutil.which("redis-server") or server_binary()


def free_port() -> int:
    """A free loopback port below 45,000 whose cluster bus port (+10,000) is free too."""
    while True:
        port = random.randint(20_000, 45_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Server:
    port: int
    directory: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [redis_binary(), *self.args], cwd=self.directory, stdout=log, stderr=subprocess.STDOUT
        )
        wait_until(lambda: self.client().ping(), 10, f"redis-server on {self.port}")
        return self

    def client(self, **options: object) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, **options)  # type: ignore[arg-type]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def data_server(directory: Path, port: int, *extra: str) -> Server:
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    return Server(port, directory, [*args, *extra])


@dataclass
class Cluster:
    primaries: list[Server]
    replicas: list[Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.primaries) + "/"

    def all(self) -> list[Server]:
        return [*self.primaries, *self.replicas]

    def node_of(self, key: str) -> Server:
        """The primary serving ``key``'s slot now."""
        for server in self.all():
            try:
                info = server.client().execute_command("CLUSTER", "NODES").decode()
            except redis.RedisError:
                continue
            slot = int(server.client().execute_command("CLUSTER", "KEYSLOT", key))
            for line in info.splitlines():
                parts = line.split()
                if "master" not in parts[2] or "fail" in parts[2]:
                    continue
                for rng in parts[8:]:
                    low, _, high = rng.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        port = int(parts[1].split(":")[1].split("@")[0])
                        return next(s for s in self.all() if s.port == port)
        raise LookupError(key)

    def stop(self) -> None:
        for server in self.all():
            server.stop()


def _cluster_ok(server: Server) -> bool:
    return b"cluster_state:ok" in server.client().execute_command("CLUSTER", "INFO")


@contextlib.contextmanager
def cluster(primaries: int = 3, replicas: int = 0, root: Path | None = None) -> Iterator[Cluster]:
    """``primaries`` primaries sharing the 16,384 slots evenly, each with ``replicas`` replicas."""
    base = Path(root or tempfile.mkdtemp(prefix="te-cluster-"))
    servers: list[Server] = []
    topology = Cluster(primaries=servers)  # stops whatever started, should a later step fail
    try:
        for _ in range(primaries * (1 + replicas)):
            port = free_port()
            servers.append(
                data_server(
                    base / str(port), port, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                    "--cluster-config-file", "nodes.conf", "--cluster-require-full-coverage", "yes",
                ).start()
            )  # fmt: skip
        topology = Cluster(primaries=servers[:primaries], replicas=servers[primaries:])
        per = SLOTS // primaries
        for i, server in enumerate(topology.primaries):
            high = SLOTS - 1 if i == primaries - 1 else (i + 1) * per - 1
            server.client().execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, high)
        first = servers[0].client()
        for server in servers[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", server.port)
        wait_until(lambda: all(len(s.client().execute_command("CLUSTER", "NODES").splitlines()) == len(servers)
                               for s in servers), 20, "every node to know every other")  # fmt: skip
        for i, replica in enumerate(topology.replicas):
            primary = topology.primaries[i % primaries]
            node_id = primary.client().execute_command("CLUSTER", "MYID").decode()
            wait_until(lambda r=replica, n=node_id: r.client().execute_command("CLUSTER", "REPLICATE", n), 20,
                       "a replica to attach")  # fmt: skip
        wait_until(lambda: all(_cluster_ok(s) for s in servers), 30, "cluster_state:ok on every node")
        for replica in topology.replicas:
            wait_until(lambda r=replica: r.client().info("replication").get("master_link_status") == "up",
                       20, "replicas in sync")  # fmt: skip
        yield topology
    finally:
        topology.stop()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class SentinelSet:
    primary: Server
    replica: Server
    sentinels: list[Server]
    master_name: str = "te-primary"

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/{db}"

    def current_primary_port(self) -> int:
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                _host, port = sentinel.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                return int(port)
        raise LookupError("no sentinel answers")

    def server(self, port: int) -> Server:
        return next(s for s in (self.primary, self.replica) if s.port == port)

    def stop(self) -> None:
        for server in (*self.sentinels, self.primary, self.replica):
            server.stop()


@contextlib.contextmanager
def sentinels(root: Path | None = None, down_after_ms: int = 1000) -> Iterator[SentinelSet]:
    """One primary, one replica and three sentinels (quorum 2), all on loopback."""
    base = Path(root or tempfile.mkdtemp(prefix="te-sentinel-"))
    p_port, r_port = free_port(), free_port()
    name = "te-primary"
    primary = data_server(base / "primary", p_port)
    replica = data_server(base / "replica", r_port, "--replicaof", "127.0.0.1", str(p_port))
    watchers: list[Server] = []
    topology = SentinelSet(primary, replica, watchers, name)  # stops whatever started, should a step fail
    try:
        primary.start()
        replica.start()
        wait_until(lambda: replica.client().info("replication").get("master_link_status") == "up", 20,
                   "the replica in sync")  # fmt: skip
        for i in range(3):
            port = free_port()
            directory = base / f"sentinel-{i}"
            directory.mkdir(parents=True)
            conf = directory / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {name} 127.0.0.1 {p_port} 2\n"
                f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
                f"sentinel failover-timeout {name} 5000\n"
                f"sentinel parallel-syncs {name} 1\n"
            )
            watchers.append(Server(port, directory, [str(conf), "--sentinel"]).start())
        wait_until(lambda: all(int(dict(zip(*[iter(s.client().execute_command("SENTINEL", "MASTER", name))] * 2,
                                            strict=False))[b"num-other-sentinels"]) == 2 for s in watchers),
                   30, "the sentinels to find each other")  # fmt: skip
        yield topology
    finally:
        topology.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["cluster", "sentinel"])
    ap.add_argument("--primaries", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=0)
    a = ap.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    manager = cluster(a.primaries, a.replicas) if a.kind == "cluster" else sentinels()
    with manager as topology:
        print(topology.url if isinstance(topology, Cluster) else topology.url(), flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
