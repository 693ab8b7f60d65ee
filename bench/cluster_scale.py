"""Redis Cluster capacity: one app (one hash tag, one primary) vs three apps spread over three primaries.

    .venv/bin/python bench/cluster_scale.py --jobs 30000 --workers 3

Starts a 3-primary cluster on loopback (``tests/topology.py``), picks key prefixes whose hash tags land
on different primaries, and drains the same number of no-op jobs (results stored) two ways, with the
same number of worker processes: all of them on one prefix, or one per prefix. Jobs are sent deferred
to one moment a few seconds ahead, so every worker is up when they become due; the drain runs from that
moment until every job has finished. Prints one table and the busiest primary's CPU share per case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks_engine import configure  # noqa: E402
from tasks_engine.core.config import EngineSettings  # noqa: E402
from tasks_engine.store import get_broker  # noqa: E402
from tasks_engine.store.connection import sync_client  # noqa: E402
from tasks_engine.store.keys import Keys  # noqa: E402
from tests import sample_tasks  # noqa: E402
from tests.topology import Cluster, cluster  # noqa: E402


def prefixes_on_distinct_primaries(topology: Cluster, count: int) -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < count:
        name = f"scale{i}"
        found.setdefault(topology.node_of(Keys(name).active).port, name)
        i += 1
    return list(found.values())


async def send(url: str, prefix: str, jobs: int, due_in: float) -> None:
    configure(EngineSettings(redis_url=url, key_prefix=prefix, beat_enabled=False))
    calls = [sample_tasks.add.s(i, 1).set(countdown=due_in) for i in range(jobs)]
    for start in range(0, jobs, 500):
        await asyncio.gather(*(c.apply_async() for c in calls[start : start + 500]))
    await get_broker().close()


def spawn(url: str, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": url, "TE_KEY_PREFIX": prefix, "TE_BEAT_ENABLED": "false"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tasks_engine.cli", "worker", "--app", "none", "-I", "tests.sample_tasks"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def left(client: object, prefixes: list[str]) -> int:
    total = 0
    for p in prefixes:
        k = Keys(p)
        total += client.zcard(k.queue("default")) + client.zcard(k.delayed) + client.hlen(k.inflight)  # type: ignore[attr-defined]
    return total


def cpu_seconds(topology: Cluster) -> list[float]:
    out = []
    for server in topology.primaries:
        assert server.proc is not None
        times = psutil.Process(server.proc.pid).cpu_times()
        out.append(times.user + times.system)
    return out


def case(topology: Cluster, prefixes: list[str], workers: int, jobs: int, logdir: Path) -> tuple[float, float]:
    """Jobs/s, and the busiest primary's CPU use (share of one core) during the drain."""
    url = topology.url
    due_in = 6.0
    t_send = time.monotonic()
    for p in prefixes:
        asyncio.run(send(url, p, jobs // len(prefixes), due_in))
    due = t_send + due_in
    assert time.monotonic() < due - 2, "sending took too long: raise due_in"
    procs = [spawn(url, prefixes[i % len(prefixes)], logdir / f"w{i}.log") for i in range(workers)]
    client = sync_client(EngineSettings(redis_url=url), socket_timeout=10)
    try:
        while time.monotonic() < due:
            time.sleep(0.01)
        before = cpu_seconds(topology)
        while left(client, prefixes):
            time.sleep(0.01)
        took = time.monotonic() - due
        busiest = max(b - a for a, b in zip(before, cpu_seconds(topology), strict=True))
        return jobs / took, busiest / took
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=30_000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--save",
        type=Path,
        help="also write the table here (bench/results-cluster-latest.txt; bench/charts.py draws it)",
    )
    a = ap.parse_args()
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / "te-cluster-scale"
    logdir.mkdir(exist_ok=True)
    with cluster(primaries=3) as topology:
        spread = prefixes_on_distinct_primaries(topology, 3)
        one = spread[:1]
        results: dict[str, list[tuple[float, float]]] = {"1 prefix": [], "3 prefixes": []}
        for _ in range(a.rounds):
            for label, prefixes in (("1 prefix", one), ("3 prefixes", spread)):
                results[label].append(case(topology, prefixes, a.workers, a.jobs, logdir))
    best = {label: max(runs) for label, runs in results.items()}
    lines = [
        f"Redis Cluster, 3 primaries on loopback; {a.jobs:,} no-op jobs (results stored), {a.workers} worker "
        f"processes, {os.cpu_count()} cores, best of {a.rounds} rounds"
    ]
    for label, (rate, cpu) in best.items():
        where = "1 primary " if label == "1 prefix" else "3 primaries"
        lines.append(f"  {label:<11} on {where}: {rate:>8,.0f} jobs/s, busiest primary {cpu:.0%} of a core")
    lines.append(f"  ratio 3 prefixes / 1 prefix: {best['3 prefixes'][0] / best['1 prefix'][0]:.2f}x")
    print("\n".join(lines))
    if a.save:
        command = "command: .venv/bin/python bench/cluster_scale.py " + " ".join(sys.argv[1:])
        a.save.write_text(f"{command}\nfinished {time.strftime('%Y-%m-%d %H:%M:%S')}\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
