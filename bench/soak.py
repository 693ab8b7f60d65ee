"""Chaos soak: jobs across 2 worker processes while workers are SIGKILLed, paused past their lease
(SIGSTOP, then SIGCONT), bad entries are planted in Redis, and Redis restarts.

    .venv/bin/python bench/soak.py --jobs 5000 --kill-every 3 --pause-every 7

Starts its own Redis (append-only, fsync always) on a free port, so it never touches yours.
Prints: enqueued, completed, lost (must be 0), stuck (neither final nor dead-lettered: must be 0),
rewritten finals (a SUCCESS record changed after it was first seen: must be 0), bad entries
quarantined, delivered more than once, longest recovery (for a job whose worker was killed: from
its start there to its next start elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis as sync_redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks_engine import configure  # noqa: E402
from tasks_engine.core.codec import loads  # noqa: E402
from tasks_engine.core.config import EngineSettings  # noqa: E402
from tasks_engine.integrations.embedded import server_binary  # noqa: E402
from tasks_engine.model import states  # noqa: E402
from tasks_engine.store import get_broker  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, port: int, directory: str) -> None:
        self.port, self.dir = port, directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = sync_redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except sync_redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("soak redis did not start")

    def restart(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


LEASE = {"TE_LEASE_SECONDS": "3", "TE_HEARTBEAT_SECONDS": "0.5"}  # short, so a pause outlives it


def spawn(url: str, prefix: str, max_jobs: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": url, "TE_KEY_PREFIX": prefix, "TE_BEAT_ENABLED": "false", **LEASE}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tasks_engine.cli",
            "worker",
            "--app",
            "none",
            "-I",
            "bench.soak_tasks",
            "--max-jobs",
            str(max_jobs),
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def soak(args: argparse.Namespace) -> int:
    workdir = tempfile.mkdtemp(prefix="te-soak-")
    server = Server(free_port(), workdir)
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    prefix = "soak"
    configure(EngineSettings(redis_url=url, key_prefix=prefix, beat_enabled=False, enqueue_wait_seconds=30))
    import bench.soak_tasks as tasks

    log = Path(workdir) / "workers.log"
    results = []
    for i in range(args.jobs):
        results.append(await tasks.work.delay(i))
    workers = [spawn(url, prefix, args.max_jobs, log) for _ in range(2)]
    poison = plant_bad_entries(server.port, prefix, [r.id for r in results])
    print(f"enqueued {len(results)} jobs and {len(poison)} bad entries; chaos starts (Redis and logs in {workdir})")
    first_success: dict[str, tuple[bytes, bytes]] = {}
    pauses = 0
    next_pause = time.monotonic() + args.pause_every
    start = time.monotonic()
    kills = 0
    redis_restarted = False
    broker = get_broker()
    deadline = start + args.timeout
    done = 0
    next_kill = start + args.kill_every
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        try:
            found = await snapshot(broker, results, first_success)
        except Exception:
            continue
        done = sum(1 for s in found if s == states.SUCCESS.encode())
        if done == len(results):
            break
        now = time.monotonic()
        if args.pause_every and now >= next_pause:
            victim = random.randrange(len(workers))
            workers[victim].send_signal(signal.SIGSTOP)  # a frozen VM: no heartbeat, no event loop
            print(f"  t={now - start:5.1f}s SIGSTOP worker {victim} for {args.pause_for:.0f}s (lease 3 s)")
            await asyncio.sleep(args.pause_for)
            workers[victim].send_signal(signal.SIGCONT)  # it wakes inside jobs others took over meanwhile
            pauses += 1
            next_pause = time.monotonic() + args.pause_every
            next_kill = time.monotonic() + args.kill_every  # let it try to complete its stale copies first
        if now >= next_kill:
            victim = random.randrange(len(workers))
            workers[victim].kill()
            workers[victim].wait()
            workers[victim] = spawn(url, prefix, args.max_jobs, log)
            kills += 1
            next_kill = now + args.kill_every
            print(f"  t={now - start:5.1f}s SIGKILL worker {victim}, restarted; completed so far {done}")
        if not redis_restarted and done >= len(results) // 2:
            server.restart()
            await broker.close()
            configure(EngineSettings(redis_url=url, key_prefix=prefix, beat_enabled=False, enqueue_wait_seconds=30))
            broker = get_broker()
            redis_restarted = True
            print(f"  t={time.monotonic() - start:5.1f}s Redis restarted (append-only file kept)")
    chaos_elapsed = time.monotonic() - start
    # Chaos over: give the survivors time to finish what is left, then look for anything missing.
    settle = time.monotonic() + args.settle
    while done < len(results) and time.monotonic() < settle:
        await asyncio.sleep(0.5)
        found = await snapshot(broker, results, first_success)
        done = sum(1 for s in found if s == states.SUCCESS.encode())
    await asyncio.sleep(5)  # a worker paused last may still try to complete an old copy: let it
    found = await snapshot(broker, results, first_success)
    rewritten = await rewritten_finals(broker, first_success)
    dead = {loads(e).get("id") for e in await broker.redis.lrange(broker.key("dead"), 0, -1)}
    quarantined = sum(1 for p in poison if p in dead)
    stuck = sum(1 for r, s in zip(results, found, strict=True) if s not in FINAL and r.id not in dead)
    fenced = log.read_text(errors="replace").count("result dropped: this worker no longer holds the job")
    elapsed = time.monotonic() - start
    for r, state in zip(results, found, strict=True):
        if state != states.SUCCESS.encode():
            where = {
                "state": state,
                "msg": await broker.redis.exists(broker.key("msg", r.id)),
                "queued": await broker.redis.zscore(broker.key("q", "default"), r.id),
                "delayed": await broker.redis.zscore(broker.key("delayed"), r.id),
                "active": await broker.redis.zscore(broker.key("active"), r.id),
            }
            print(f"  not completed: {r.id} {where}")
    starts: dict[int, list[float]] = {}
    for raw in await broker.redis.lrange(broker.key("soak-starts"), 0, -1):
        index, at, _delivered = raw.decode().split("|")
        starts.setdefault(int(index), []).append(float(at))
    twice = sum(1 for s in starts.values() if len(s) > 1)
    # A redelivery's wait: from one start of a job to its next start (its worker died in between).
    recovery = max(
        (b - a for s in starts.values() for a, b in zip(sorted(s), sorted(s)[1:], strict=False)), default=0.0
    )
    lost = len(results) - done
    print(
        f"\njobs enqueued {len(results)}, completed {done}, lost {lost}, stuck {stuck}, rewritten finals "
        f"{rewritten} (stale completions dropped {fenced}), bad entries quarantined {quarantined}/{len(poison)}, "
        f"delivered more than once {twice}, "
        f"longest recovery {recovery:.1f}s, workers killed {kills}, paused {pauses}, Redis restarted "
        f"{int(redis_restarted)}, elapsed {elapsed:.1f}s (chaos {chaos_elapsed:.1f}s)"
    )
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(timeout=15)
        except subprocess.TimeoutExpired:
            w.kill()
    await broker.close()
    server.stop()
    return 0 if lost == stuck == rewritten == 0 and quarantined == len(poison) else 1


FINAL = {s.encode() for s in states.READY_STATES}


async def snapshot(broker: Any, results: list[Any], first_success: dict[str, tuple[bytes, bytes]]) -> list[Any]:
    """Every job's state now; the first time a job is seen SUCCESS, its worker and result are kept."""
    async with broker.redis.pipeline(transaction=False) as pipe:
        for r in results:
            pipe.hmget(broker.result_key(r.id), ["state", "worker", "result"])
        rows = await pipe.execute(raise_on_error=False)
    # A planted result key of the wrong type answers WRONGTYPE until its job replaces it.
    rows = [row if isinstance(row, list) else [None, None, None] for row in rows]
    for r, (state, worker, result) in zip(results, rows, strict=True):
        if state == states.SUCCESS.encode() and r.id not in first_success:
            first_success[r.id] = (worker, result)
    return [row[0] for row in rows]


async def rewritten_finals(broker: Any, first_success: dict[str, tuple[bytes, bytes]]) -> int:
    """SUCCESS records that changed since first seen (a stale worker's write landing after the fact)."""
    ids = list(first_success)
    async with broker.redis.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.hmget(broker.result_key(task_id), ["state", "worker", "result"])
        rows = await pipe.execute()
    return sum(
        1 for task_id, (state, worker, result) in zip(ids, rows, strict=True)
        if state != states.SUCCESS.encode() or (worker, result) != first_success[task_id]
    )  # fmt: skip


def plant_bad_entries(port: int, prefix: str, ids: list[str]) -> list[str]:
    """Entries the engine's own code never writes, as a bug, an operator or a partial restore might:
    each must be quarantined (a dead letter), never stop a worker. Returns the ids to look for."""
    client = sync_redis.Redis(port=port)
    client.set(f"{{{prefix}}}:msg:poison-no-place", b"{}")
    client.zadd(f"{{{prefix}}}:delayed", {"poison-no-place": 1})
    client.hset(f"{{{prefix}}}:dq", "poison-no-place", "no separator here")
    client.zadd(f"{{{prefix}}}:q:default", {"poison-lost-message": 1})  # queued, but its message is gone
    client.set(f"{{{prefix}}}:msg:poison-wrong-type-msg", b"x")
    client.delete(f"{{{prefix}}}:msg:poison-wrong-type-msg")
    client.rpush(f"{{{prefix}}}:msg:poison-wrong-type-msg", b"a list, not a message")
    client.zadd(f"{{{prefix}}}:q:default", {"poison-wrong-type-msg": 2})
    client.hset(f"{{{prefix}}}:rate-limits", "soak.work", "not json")  # must be ignored, not fatal
    client.set(f"{{{prefix}}}:res:{ids[len(ids) // 3]}", "a string where a result hash belongs")  # repaired
    client.close()
    return ["poison-no-place", "poison-lost-message", "poison-wrong-type-msg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--kill-every", type=float, default=3.0)
    parser.add_argument("--max-jobs", type=int, default=5)
    parser.add_argument("--pause-every", type=float, default=7.0, help="seconds between SIGSTOPs (0: none)")
    parser.add_argument("--pause-for", type=float, default=5.0, help="seconds a paused worker stays stopped")
    parser.add_argument("--timeout", type=float, default=600, help="seconds of chaos at most")
    parser.add_argument("--settle", type=float, default=60, help="seconds without chaos to finish the rest")
    sys.exit(asyncio.run(soak(parser.parse_args())))


if __name__ == "__main__":
    main()
