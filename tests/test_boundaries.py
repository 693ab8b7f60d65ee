"""The engine's outer edges, as a user meets them: a malformed ``REDIS_URL`` under every entry point
(one line, exit 2, not a character run of its password anywhere), the CLI's exit codes and human
output per subcommand, workflows checked whole before anything is sent, and arguments nested too
deeply for a message. Real Redis, real subprocesses."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tasks_engine import chain, chord, group, send_task
from tasks_engine.model.arguments import MAX_DEPTH
from tasks_engine.store import get_broker
from tests import sample_tasks as t
from tests.conftest import ROOT, worker_env

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SECRET = "Zq7PaSsWoRdLongSecretValue1234"

#: Malformed URLs: every entry point refuses them before connecting.
BAD_URLS = {
    "bad-scheme": f"bogus://:{SECRET}@127.0.0.1:6379/0",
    "http": f"http://user:{SECRET}@127.0.0.1/0",
    "cluster-no-host": f"redis+cluster://:{SECRET}@/",
    "sentinel-bad-port": f"redis+sentinel://:{SECRET}@sentinel:port/mymaster",
    "user-pass-bad-port": f"redis://user:{SECRET}@127.0.0.1:notaport/0",
    "password-only-bad-port": f"redis://{SECRET}@127.0.0.1:notaport/0",
    "bad-database": f"redis://:{SECRET}@127.0.0.1:6379/notadb",
    "unescaped-slash-in-password": f"redis+cluster://:ab/{SECRET}@/",
    "no-scheme": f"{SECRET}@127.0.0.1:6379",
}
#: Well-formed URLs of a Redis that is not there: the commands report it with the URL redacted.
UNREACHABLE_URLS = {
    "password-only": f"redis://{SECRET}@127.0.0.1:1/0",
    "user-and-password": f"redis://admin:{SECRET}@127.0.0.1:1/0",
    "query-password": f"redis://127.0.0.1:1/0?password={SECRET}",
}
ENTRY_POINTS = {
    "tasks-engine status": [str(BIN / "tasks-engine"), "status"],
    "tasks-engine status --json": [str(BIN / "tasks-engine"), "status", "--json"],
    "tasks-engine worker": [str(BIN / "tasks-engine"), "worker"],
    "python -m tasks_engine inspect queues --json": [
        sys.executable,
        "-m",
        "tasks_engine",
        "inspect",
        "queues",
        "--json",
        "--app",
        "none",
    ],  # fmt: skip
    "tasks-engine dead list --json --app none": [str(BIN / "tasks-engine"), "dead", "list", "--json", "--app", "none"],
    "arq settings.WorkerSettings": [str(BIN / "arq"), "settings.WorkerSettings"],
}
LONG_RUNNING = {"tasks-engine worker", "arq settings.WorkerSettings"}  # they retry an unreachable Redis
#: Every URL through these; the other entry points (the same settings code) with two URLs each.
EVERY_URL = ("tasks-engine status --json", "arq settings.WorkerSettings")


def matrix(urls: dict[str, str]) -> list[tuple[str, str, str]]:
    some = list(urls)[:2]
    return [(name, url, entry) for name, url in urls.items() for entry in ENTRY_POINTS
            if entry in EVERY_URL or name in some]  # fmt: skip


def leaked(text: str) -> list[str]:
    """The secret, its URL-quoted form, or any 6-character run of it found in ``text``."""
    pieces = {SECRET, quote(SECRET, safe="")} | {SECRET[i : i + 6] for i in range(len(SECRET) - 5)}
    return sorted(p for p in pieces if p in text)


async def run(argv: list[str], url: str, prefix: str, timeout: float) -> tuple[int | None, str, str]:
    """Run ``argv`` from the repository (its settings.py) with ``REDIS_URL=url``; stop it after ``timeout``."""
    env = worker_env(prefix, REDIS_URL=url, COLUMNS="200")
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    stderr = proc.stderr
    err = bytearray()

    async def read_stderr() -> None:  # line by line: a long-running process is stopped once it reported
        async for line in stderr:
            err.extend(line)
            if len(err.splitlines()) >= 3:
                return

    out_reader = asyncio.ensure_future(proc.stdout.read())
    code: int | None = None
    try:
        await asyncio.wait_for(read_stderr(), timeout)
        code = await asyncio.wait_for(proc.wait(), 0.5 if err else timeout)
    except TimeoutError:
        proc.terminate()
        await proc.wait()
    err.extend(await stderr.read())
    return code, (await out_reader).decode(), err.decode()


async def run_all(cases: list[tuple[str, str, str]], prefix: str, timeout: float) -> dict[tuple[str, str], Any]:
    gate = asyncio.Semaphore(2)  # CI machines have two cores

    async def one(url_name: str, url: str, entry: str) -> tuple[tuple[str, str], Any]:
        async with gate:
            return (url_name, entry), await run(ENTRY_POINTS[entry], url, prefix, timeout)

    return dict(await asyncio.gather(*(one(*case) for case in cases)))


@pytest.mark.timeout(300)  # ~26 interpreter starts: ~15 s on two idle cores
async def test_a_malformed_redis_url_is_one_line_exit_2_and_shows_no_piece_of_its_password(prefix):
    results = await run_all(matrix(BAD_URLS), prefix, timeout=60)
    problems = []
    for (name, entry), (code, out, err) in results.items():
        lines = err.strip().splitlines()
        if leaked(out + err):
            problems.append(f"{name} / {entry}: leaks {leaked(out + err)}")
        if code != 2 or out or len(lines) != 1 or "Traceback" in err:
            problems.append(f"{name} / {entry}: exit {code}, stdout {out!r}, stderr {err[-400:]!r}")
        elif "REDIS_URL" not in lines[0] and "URL" not in lines[0]:
            problems.append(f"{name} / {entry}: the line does not say what is wrong: {lines[0]!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(300)
async def test_an_unreachable_redis_is_reported_without_any_piece_of_the_credentials(prefix):
    results = await run_all(matrix(UNREACHABLE_URLS), prefix, timeout=12)
    problems = []
    for (name, entry), (code, out, err) in results.items():
        if leaked(out + err):
            problems.append(f"{name} / {entry}: leaks {leaked(out + err)}")
        if entry in LONG_RUNNING:
            if "unreachable" not in err and "connection error" not in err.lower():
                problems.append(f"{name} / {entry}: no report of the outage in {err[-400:]!r}")
        elif code != 3 or len(err.strip().splitlines()) != 1 or "127.0.0.1:1" not in err:
            problems.append(f"{name} / {entry}: exit {code}, stderr {err[-400:]!r}")
    assert not problems, "\n".join(problems)


def test_redaction_hides_the_userinfo_whatever_its_form():
    from tasks_engine.core.redis_url import redacted

    for url, shown in [
        (f"redis://{SECRET}@h:1/0", "redis://***@h:1/0"),
        (f"redis://alice:{SECRET}@h:1/0", "redis://***@h:1/0"),
        (f"redis://:{SECRET}@h:1/0", "redis://***@h:1/0"),
        (f"rediss://alice:{quote(SECRET)}@h:1/0?ssl_ca_certs=/ca.pem", "rediss://***@h:1/0?ssl_ca_certs=/ca.pem"),
        (f"redis://h:1/0?password={SECRET}&db=1", "redis://h:1/0?password=***&db=1"),
        (f"redis://:ab/{SECRET}@h:1/0", "redis://***@h:1/0"),
        (f"redis://:a@b?{SECRET}@h/0", "redis://***@h/0"),
        (f"unix://:{SECRET}@/run/redis.sock?db=0", "unix://***@/run/redis.sock?db=0"),
    ]:
        assert redacted(url) == shown and not leaked(redacted(url)), url


# ---------------------------------------------------------------- CLI exit codes and output
async def cli(prefix: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tasks_engine", *args, "--app", "none", cwd=ROOT,
        env={**worker_env(prefix), "COLUMNS": "200"}, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_human(code: int, out: str, err: str, expected: int) -> None:
    assert code == expected, (code, out, err)
    assert "{'" not in out + err and "Traceback" not in err, (out, err)  # text or tables, never a repr


MISSING = "no-such-id-0000"
#: (subcommand, exit code) on an empty cluster: 1 when what was named matches nothing, 0 for reports.
EMPTY_CLUSTER = [
    (["status"], 0),
    (["inspect", "active"], 0),
    (["inspect", "scheduled"], 0),
    (["inspect", "registered"], 0),
    (["inspect", "queues"], 0),
    (["dead", "list"], 0),
    (["migrate-keys", "--dry-run"], 0),
    (["rate-limit", "demo.add", "5/m"], 0),
    (["revoke", MISSING], 0),  # a revoked id is remembered: a job sent later with it never runs
    (["call", "demo.add", "--args", "[1, 2]"], 0),
    (["ping"], 1),
    (["dead", "show", MISSING], 1),
    (["dead", "requeue", MISSING], 1),
    (["dead", "drop", MISSING], 1),
    (["dead", "drop", "--all", "--yes"], 1),
    (["revoke-matching", "nothing.matches.*"], 1),
    (["purge", "no-such-queue", "--yes"], 1),
    (["retry", MISSING], 1),
    (["retry-failed", "--since", "1h"], 1),
    (["retry-failed", "--since", "1h", "--dry-run"], 1),
    (["result", MISSING], 1),
    (["call", "demo.add", "--args", "not json"], 2),
    (["call", "demo.add", "--queue", "a|b"], 2),
    (["dead", "drop"], 2),
    (["dead", "requeue"], 2),
    (["purge", "--yes"], 2),
    (["purge", "some-queue"], 2),  # asks first: nobody answers, nothing is deleted
    (["retry-failed", "--since", "soon"], 2),
    (["inspect", "nothing"], 2),
]


@pytest.mark.parametrize(("args", "expected"), EMPTY_CLUSTER, ids=[" ".join(a) for a, _ in EMPTY_CLUSTER])
async def test_exit_codes_and_output_follow_one_rule(engine, prefix, args, expected):
    with_json = expected == 1 or args[0] in ("status", "dead")  # every one of them takes --json
    runs = [cli(prefix, *args), *([cli(prefix, *args, "--json")] if with_json else [])]
    (code, out, err), *json_run = await asyncio.gather(*runs)
    assert_human(code, out, err, expected)
    if expected == 1:
        assert out.strip() or err.strip(), "nothing matched must say so"
    for jcode, jout, jerr in json_run:
        assert jcode == expected, (jcode, jout, jerr)
        if jout.strip():
            json.loads(jout)  # the machine form is one JSON document
        assert "{'" not in jerr


async def test_human_output_of_commands_that_found_something(engine, prefix, spawn_worker):
    """The same commands when they match: exit 0, and tables or text (never a dict repr)."""
    spawn_worker()
    done = await t.add.delay(2, 3)
    assert await done.get(timeout=10) == 5
    dead = await send_task("not.registered", kwargs={"k": {"nested": 1}})
    broker = get_broker()
    deadline = time.monotonic() + 15
    while not await broker.redis.llen(broker.key("dead")):
        assert time.monotonic() < deadline, "no dead letter"
        await asyncio.sleep(0.1)
    await t.add.apply_async((1, 1), queue="parked")
    for args in (["result", done.id], ["dead", "show", dead.id], ["dead", "list"], ["status"], ["inspect", "queues"],
                 ["inspect", "reserved"], ["purge", "parked", "--yes"], ["dead", "requeue", dead.id]):  # fmt: skip
        code, out, err = await cli(prefix, *args)
        assert_human(code, out, err, 0)
        assert out.strip(), args
    assert (await cli(prefix, "result", done.id, "--json"))[1].count('"state":"SUCCESS"') == 1
    while not await broker.redis.llen(broker.key("dead")):  # requeued, unknown again: dead again
        assert time.monotonic() < deadline + 15, "no dead letter after the requeue"
        await asyncio.sleep(0.1)
    code, out, err = await cli(prefix, "dead", "drop", dead.id)
    assert_human(code, out, err, 0)
    assert "dropped 1" in out


# ---------------------------------------------------------------- metrics bind address
def listening_address(port: int) -> str | None:
    """The local address a TCP socket listens on at ``port`` (from /proc/net/tcp), e.g. ``0.0.0.0``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            return socket.inet_ntoa(bytes.fromhex(address)[::-1])
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the listening sockets from /proc")
def test_worker_metrics_bind_every_interface_unless_metrics_host_restricts_them(spawn_worker):
    default_port, local_port = free_port(), free_port()
    spawn_worker("--metrics-port", str(default_port))
    spawn_worker("--metrics-port", str(local_port), "--metrics-host", "127.0.0.1")
    deadline = time.monotonic() + 10
    while None in (listening_address(default_port), listening_address(local_port)):
        assert time.monotonic() < deadline, "metrics ports not listening"
        time.sleep(0.1)
    assert listening_address(default_port) == "0.0.0.0"  # as the README says
    assert listening_address(local_port) == "127.0.0.1"


# ---------------------------------------------------------------- workflows are checked whole
BAD_QUEUE = "a|b"
BAD_WORKFLOWS = {
    "chain-later-step": lambda: chain(t.add.s(1, 2), t.add.s(3).set(queue=BAD_QUEUE)),
    "nested-chain": lambda: chain(t.add.s(1, 2), chain(t.add.s(3), t.add.s(4).set(queue=BAD_QUEUE))),
    "group-member": lambda: group(t.add.s(1, 2), t.add.s(3, 4).set(queue=BAD_QUEUE)),
    "chord-header": lambda: chord([t.add.s(1, 2), t.add.s(1, 2).set(queue=BAD_QUEUE)], t.tsum.s()),
    "chord-body": lambda: chord([t.add.s(1, 2)], t.tsum.s().set(queue=BAD_QUEUE)),
    "chord-body-later-step": lambda: chord([t.add.s(1, 2)], chain(t.tsum.s(), t.add.s(1).set(queue=BAD_QUEUE))),
    "chain-of-chords": lambda: chain(t.add.s(1, 2), chord([t.add.s(1)], t.tsum.s().set(queue=BAD_QUEUE))),
    "link": lambda: t.add.s(1, 2).set(link=t.add.s(3).set(queue=BAD_QUEUE)),
    "link-error": lambda: t.add.s(1, 2).on_error(t.fail.si().set(queue=BAD_QUEUE)),
    "later-step-link-error": lambda: chain(t.add.s(1, 2), t.add.s(3).on_error(t.fail.si().set(queue=BAD_QUEUE))),
    "errback-workflow": lambda: t.add.s(1, 2).on_error(chain(t.fail.si(), t.fail.si().set(queue=BAD_QUEUE))),
}


@pytest.mark.parametrize("shape", list(BAD_WORKFLOWS))
async def test_every_step_of_a_workflow_is_checked_when_it_is_sent(engine, sync_client, prefix, shape):
    sig = BAD_WORKFLOWS[shape]()
    with pytest.raises(ValueError, match=r"task 'demo\.(add|tsum|fail)': queue 'a\|b' must not contain '\|'"):
        await sig.apply_async()
    assert not list(sync_client.scan_iter(match=f"{{{prefix}}}:*")), "a half-sent workflow"


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("priority", 42, r"'demo.add': priority"),
        ("countdown", "soon", r"'demo.add': countdown"),
        ("expires", "never", r"'demo.add': expires"),
        ("retries", -1, r"'demo.add': retries"),
    ],  # fmt: skip
)
async def test_a_later_steps_bad_option_names_the_task_and_the_option(
    engine, sync_client, prefix, option, value, match
):
    with pytest.raises((ValueError, TypeError), match=match):
        await chain(t.add.s(1, 2), t.add.s(3), t.add.s(4).set(**{option: value})).apply_async()
    assert not list(sync_client.scan_iter(match=f"{{{prefix}}}:*"))


# ---------------------------------------------------------------- arguments nested too deeply
def nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("depth", [MAX_DEPTH + 50, 5000])
async def test_arguments_nested_too_deeply_say_so(engine, sync_client, prefix, depth):
    with pytest.raises(TypeError, match=rf"task 'demo.identity': argument 'x' is nested deeper than {MAX_DEPTH}"):
        await t.identity.delay(nested(depth))
    with pytest.raises(TypeError, match=rf"task 'not.registered': argument 'deep' is nested deeper than {MAX_DEPTH}"):
        await send_task("not.registered", (1,), {"deep": nested(depth)})
    with pytest.raises(TypeError, match=r"nested deeper") as caught:
        await chain(t.add.s(1, 2), t.identity.s().set(queue="q"), t.identity.si(nested(depth))).apply_async()
    assert "JSON-serializable" not in str(caught.value)
    assert not list(sync_client.scan_iter(match=f"{{{prefix}}}:*"))
    assert await t.identity.delay(nested(MAX_DEPTH // 2))  # within the limit it is sent
