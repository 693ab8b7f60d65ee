"""Chaos soak: jobs across 2 worker processes while workers are SIGKILLed and Redis restarts.

    .venv/bin/python bench/soak.py --jobs 5000 --kill-every 3

Starts its own Redis (append-only, fsync always) on a free port, so it never touches yours.
Prints: enqueued, completed, lost (must be 0), delivered more than once, longest recovery
(for a job whose worker was killed: from its start there to its next start elsewhere).
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

import redis as sync_redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks_engine import configure, states  # noqa: E402
from tasks_engine.config import EngineSettings  # noqa: E402
from tasks_engine.embedded import server_binary  # noqa: E402
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


def spawn(url: str, prefix: str, max_jobs: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": url, "TE_KEY_PREFIX": prefix, "TE_BEAT_ENABLED": "false"}
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
    print(f"enqueued {len(results)} jobs; chaos starts (Redis and logs in {workdir})")
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
            async with broker.redis.pipeline(transaction=False) as pipe:
                for r in results:
                    pipe.hget(broker.result_key(r.id), "state")
                found = await pipe.execute()
        except Exception:
            continue
        done = sum(1 for s in found if s == states.SUCCESS.encode())
        if done == len(results):
            break
        now = time.monotonic()
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
        async with broker.redis.pipeline(transaction=False) as pipe:
            for r in results:
                pipe.hget(broker.result_key(r.id), "state")
            found = await pipe.execute()
        done = sum(1 for s in found if s == states.SUCCESS.encode())
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
        f"\njobs enqueued {len(results)}, completed {done}, lost {lost}, delivered more than once {twice}, "
        f"longest recovery {recovery:.1f}s, workers killed {kills}, Redis restarted {int(redis_restarted)}, "
        f"elapsed {elapsed:.1f}s (chaos {chaos_elapsed:.1f}s)"
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
    return 0 if lost == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--kill-every", type=float, default=3.0)
    parser.add_argument("--max-jobs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600, help="seconds of chaos at most")
    parser.add_argument("--settle", type=float, default=60, help="seconds without chaos to finish the rest")
    sys.exit(asyncio.run(soak(parser.parse_args())))


if __name__ == "__main__":
    main()
