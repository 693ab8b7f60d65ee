"""Issue 7, "Security": no pickle anywhere, HMAC-signed messages, Redis with a password, an ACL user
and TLS — each exercised end to end by real worker processes against real redis-server processes
started here — and secrets that never reach logs or reprs.

Every process is started once per module, all at the same time (Python start-up dominates), and each
test waits only for the ones it uses.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import tokenize
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis as sync_redis
from pydantic import SecretStr

import tests.sample_tasks as t
from tasks_engine import (
    AsyncResult,
    EngineSettings,
    chord,
    configure,
    get_settings,
    send_task,
    states,
)
from tasks_engine.client.plan import Context
from tasks_engine.core.config import redacted_url
from tasks_engine.exceptions import MessageError
from tasks_engine.integrations.arq_bridge import worker_settings
from tasks_engine.integrations.embedded import server_binary
from tasks_engine.model.messages import arq_job_deserializer, arq_job_serializer
from tasks_engine.store import Broker, Enqueue, get_broker
from tests.conftest import skip_or_fail_in_ci
from tests.dashboard_support import call, free_port
from tests.test_dashboard_security import ROUTES

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
LEASE = 2.0


# ---------------------------------------------------------------- no pickle
PICKLE_FREE = [ROOT / "tasks_engine", ROOT / "jobs", ROOT / "settings.py"]
SERIALIZER_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "jsonpickle", "shelve", "marshal"}


def pickle_violations(source: str, filename: str = "<source>") -> list[str]:
    """Every mention of pickle that is not in a comment or a docstring, and every import of a
    code-executing serializer. (``grep -rn pickle``, but told apart by the tokenizer.)"""
    tree = ast.parse(source, filename)
    docstrings: set[tuple[int, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.add((first.lineno, first.col_offset))
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if "pickle" not in tok.string.lower():
            continue
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.start in docstrings):
            continue
        found.append(f"{filename}:{tok.start[0]}: {tok.line.strip()}")
    for node in ast.walk(tree):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        found += [f"{filename}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in SERIALIZER_MODULES]
    return found


def test_pickle_checker_can_fail():
    assert pickle_violations("import pickle\n")
    assert pickle_violations("import marshal\n")
    assert pickle_violations("from dill import loads\n")
    assert pickle_violations("x = 'use pickle here'\n")
    assert pickle_violations("def f():\n    return loads_pickle(b'')\n")
    assert not pickle_violations('"""Doc: never pickle."""\n# no pickle: JSON only\nx = 1  # pickle? no\n')
    assert not pickle_violations('def f():\n    """Not pickle."""\n    return 1\n')


def test_no_pickle_in_engine_jobs_or_settings():
    files = [p for root in PICKLE_FREE for p in ([root] if root.is_file() else sorted(root.rglob("*.py")))]
    assert len(files) > 10 and (ROOT / "settings.py") in files
    violations = [v for path in files for v in pickle_violations(path.read_text(), str(path.relative_to(ROOT)))]
    assert violations == []


class _Bomb:
    """Unpickling this creates a directory: proof that some code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def test_arq_is_given_json_serializers_and_refuses_a_pickle(tmp_path):
    settings_cls = worker_settings()
    assert settings_cls.job_serializer is arq_job_serializer  # type: ignore[attr-defined]
    assert settings_cls.job_deserializer is arq_job_deserializer  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        arq_job_deserializer(pickle.dumps(_Bomb(tmp_path / "pwned")))
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_binary() -> str:
    return shutil.which("redis-server") or server_binary()


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Proc:
    name: str
    prefix: str
    url: str  # where it announces itself
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Lab:
    tmp: Path
    password: str  # has URL-special characters on purpose
    wrong_password: str
    acl_password: str
    signing_key: str
    urls: dict[str, str] = field(default_factory=dict)
    servers: list[Server] = field(default_factory=list)
    procs: dict[str, Proc] = field(default_factory=dict)
    tls_skip: str | None = None

    def wait(self, name: str, timeout: float = 40) -> Proc:
        handle = self.procs[name]
        client = sync_redis.Redis.from_url(handle.url)
        try:
            deadline = time.monotonic() + timeout
            while not list(client.scan_iter(f"{{{handle.prefix}}}:worker:*")):
                if handle.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{name} did not start:\n{handle.text()[-3000:]}")
                time.sleep(0.05)
        finally:
            client.close()
        return handle


def _start_server(lab: Lab, name: str, extra: list[str], tls: bool = False) -> Server:
    """A redis-server on a free port (TLS-only when ``tls``), stopped by the fixture."""
    port = _free_port()
    ports = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
    log = lab.tmp / f"redis-{name}.log"
    proc = subprocess.Popen(
        [
            _redis_binary(),
            *ports,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(lab.tmp),
            "--logfile",
            str(log),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    server = Server(name, port, proc, log)
    lab.servers.append(server)
    deadline = time.monotonic() + 10
    while "Ready to accept connections" not in (log.read_text(errors="replace") if log.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server {name} did not start: {log.read_text(errors='replace')[-1500:]}")
        time.sleep(0.02)
    return server


def _make_certs(tmp: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1, with the openssl CLI."""
    ca_key, ca, key, csr, cert, ext = (
        tmp / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "ext.cnf")
    )
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (
        ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=te-test-ca"],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
    ):
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    return ca, cert, key


def _spawn(lab: Lab, name: str, url: str, argv: list[str], prefix: str | None = None, **env_extra: str) -> Proc:
    prefix = prefix or f"sec{name}{uuid.uuid4().hex[:6]}"
    env = dict(os.environ)
    env.pop("TE_SIGNING_KEY", None)
    env.update(
        {
            "REDIS_URL": url,
            "TE_KEY_PREFIX": prefix,
            "TE_LEASE_SECONDS": str(LEASE),
            "TE_HEARTBEAT_SECONDS": "0.5",
            "TE_BEAT_ENABLED": "false",
            "TE_LOG_LEVEL": "DEBUG",
            "PYTHONUNBUFFERED": "1",
            **env_extra,
        }
    )
    log = lab.tmp / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    handle = Proc(name, prefix, url, proc, log)
    lab.procs[name] = handle
    return handle


SETTINGS_SECRETS = {
    "REDIS_URL": "redis://:redis-secret-1@127.0.0.1:6379/0",
    "TE_SIGNING_KEY": "signing-secret-2",
    "DATABASE_URL": "postgresql+asyncpg://app:db-secret-3@127.0.0.1:5432/test",
    "TE_SMTP_PASSWORD": "smtp-secret-4",
}
SETTINGS_PROBE = "import settings; s = settings.settings; print(repr(s)); print(str(s)); print('PROBE-DONE')"
WORKER = ["-m", "tasks_engine.cli", "worker", "--app", "none", "-I", "tests.sample_tasks", "--no-beat"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("security")
    lab = Lab(
        tmp,
        password=f"p@ss:w/rd%{secrets.token_hex(8)}",
        wrong_password=f"wrong-{secrets.token_hex(8)}",
        acl_password=f"acl-{secrets.token_hex(8)}",
        signing_key=f"sig-{secrets.token_hex(12)}",
    )
    try:
        # Redis with a password; Redis with only a key-restricted ACL user; Redis over TLS only (+ password).
        acl_prefix = f"secacl{uuid.uuid4().hex[:6]}"
        password = _start_server(lab, "password", ["--requirepass", lab.password])
        acl = _start_server(
            lab,
            "acl",
            [
                "--user",
                "alice",
                "on",
                f">{lab.acl_password}",
                f"~{{{acl_prefix}}}:*",
                f"&{{{acl_prefix}}}:*",
                "+@all",
                "-@dangerous",
                "--user",
                "default",
                "off",
            ],
        )
        quoted = quote(lab.password, safe="")
        lab.urls["password"] = f"redis://:{quoted}@127.0.0.1:{password.port}/0"
        lab.urls["wrong"] = f"redis://:{lab.wrong_password}@127.0.0.1:{password.port}/0"
        lab.urls["acl"] = f"redis://alice:{lab.acl_password}@127.0.0.1:{acl.port}/0"
        if shutil.which("openssl") is None:
            lab.tls_skip = "the openssl CLI is not installed, so no test certificate can be made"
        else:
            ca, cert, key = _make_certs(tmp)
            try:
                tls = _start_server(
                    lab,
                    "tls",
                    [
                        "--tls-cert-file",
                        str(cert),
                        "--tls-key-file",
                        str(key),
                        "--tls-ca-cert-file",
                        str(ca),
                        "--tls-auth-clients",
                        "no",
                        "--requirepass",
                        lab.password,
                    ],
                    tls=True,
                )
                lab.urls["tls"] = (
                    f"rediss://:{quoted}@127.0.0.1:{tls.port}/0?ssl_ca_certs={ca}"
                    "&ssl_cert_reqs=required&ssl_check_hostname=true"
                )
            except RuntimeError as exc:
                lab.tls_skip = f"{_redis_binary()} cannot serve TLS: {exc}"
        # Every process at once.
        _spawn(lab, "password", lab.urls["password"], WORKER)
        _spawn(lab, "wrong", lab.urls["wrong"], WORKER)
        _spawn(lab, "acl", lab.urls["acl"], WORKER, prefix=acl_prefix)
        _spawn(lab, "signing", REDIS_URL, WORKER, TE_SIGNING_KEY=lab.signing_key)
        if "tls" in lab.urls:
            _spawn(lab, "tls", lab.urls["tls"], WORKER)
        # The production entry point, arq hosting settings.py: on the default Redis, and on TLS + password.
        _spawn(lab, "arq", REDIS_URL, ["-m", "arq", "settings.WorkerSettings"])
        if "tls" in lab.urls:
            _spawn(lab, "arqtls", lab.urls["tls"], ["-m", "arq", "settings.WorkerSettings"])
        # settings.py loaded with secrets everywhere, printing its repr (a subprocess: importing it reconfigures).
        probe_env = {k: v for k, v in SETTINGS_SECRETS.items() if k != "REDIS_URL"}
        _spawn(lab, "settings", SETTINGS_SECRETS["REDIS_URL"], ["-c", SETTINGS_PROBE], **probe_env)
        yield lab
    finally:
        for handle in lab.procs.values():
            if handle.proc.poll() is None:
                handle.proc.terminate()
        for handle in lab.procs.values():
            try:
                handle.proc.wait(10)
            except subprocess.TimeoutExpired:
                handle.proc.kill()
                handle.proc.wait()
        for server in lab.servers:
            server.proc.terminate()
            server.proc.wait(10)
        client = sync_redis.Redis.from_url(REDIS_URL)
        for name in ("signing", "arq"):
            if name in lab.procs:
                keys = list(client.scan_iter(match=f"{{{lab.procs[name].prefix}}}:*", count=1000))
                if keys:
                    client.delete(*keys)
        client.close()


async def close_client(broker: Broker) -> None:
    """Stop the result listener, then close (see tests/test_bad_input.py: close_client)."""
    await broker.close()


@pytest.fixture
async def use() -> AsyncIterator[Any]:
    """``use(handle, **settings)``: make this test process a client of that worker's Redis and key prefix."""

    def configure_for(handle: Proc, **overrides: Any) -> EngineSettings:
        return configure(
            EngineSettings(
                REDIS_URL=handle.url, key_prefix=handle.prefix, beat_enabled=False, lease_seconds=LEASE, **overrides
            )
        )

    yield configure_for
    await close_client(get_broker())
    configure(EngineSettings())


def _assert_secret_hidden(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text and quote(secret, safe="") not in text, "a secret leaked"


def _assert_settings_hide(settings: EngineSettings, *secrets_: str) -> None:
    shown = [repr(settings), str(settings), settings.model_dump_json(), repr(settings.model_dump())]
    for secret in secrets_:
        _assert_secret_hidden(secret, *shown)


# ---------------------------------------------------------------- Redis with a password
async def test_password_protected_redis_end_to_end_and_password_never_logged(lab, use):
    handle = lab.wait("password")
    port = int(lab.urls["password"].rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(sync_redis.exceptions.AuthenticationError):  # the server really wants the password
        sync_redis.Redis(port=port).ping()
    settings = use(handle)
    assert await (await t.add.delay(2, 3)).get(timeout=15) == 5
    assert "***@" in redacted_url() and lab.password not in redacted_url()
    _assert_settings_hide(settings, lab.password)
    log = handle.text()
    assert "worker starting" in log and f"redis://***@127.0.0.1:{port}/0" in log
    _assert_secret_hidden(lab.password, log)


async def test_wrong_password_is_reported_without_the_password(lab):
    handle = lab.procs["wrong"]
    deadline = time.monotonic() + 40
    while "redis unreachable" not in handle.text():
        assert handle.proc.poll() is None and time.monotonic() < deadline, handle.text()[-2000:]
        time.sleep(0.1)
    log = handle.text()
    assert "invalid username-password pair" in log or "WRONGPASS" in log, log[-2000:]
    _assert_secret_hidden(lab.wrong_password, log)


async def test_no_dashboard_page_api_answer_or_metric_shows_any_piece_of_the_password(lab, use, dashboard):
    """Every GET route of the dashboard and a worker's ``/metrics``, both on the password-protected Redis,
    with jobs to show: none holds the password, its URL-quoted form, or any 6-character run of either."""
    handle = lab.wait("password")
    use(handle)
    done = await t.add.delay(2, 3)
    assert await done.get(timeout=15) == 5
    waiting = await t.add.apply_async((1, 2), queue="nobody-consumes")
    metrics_port = free_port()
    worker = _spawn(lab, "metrics", lab.urls["password"], WORKER, prefix=handle.prefix,
                    TE_METRICS_PORT=str(metrics_port), TE_METRICS_HOST="127.0.0.1")  # fmt: skip
    port = int(dashboard(env={"REDIS_URL": lab.urls["password"], "TE_KEY_PREFIX": handle.prefix}).rsplit(":", 1)[1])
    secrets_ = (lab.password, quote(lab.password, safe=""))
    pieces = {secret[i : i + 6] for secret in secrets_ for i in range(len(secret) - 5)}
    shown: dict[str, str] = {}
    for method, path in ROUTES:
        if method == "GET":
            real = re.sub(r"/x(?=/|\?|$)", f"/{done.id}", path)
            reply = call(port, "GET", real, {"Host": f"127.0.0.1:{port}"})
            shown[path] = reply.body.decode(errors="replace")
    assert "127.0.0.1" in shown["/"] and waiting.id in shown["/api/tasks"]  # the pages really read that Redis
    assert done.id in shown[next(path for path in shown if path.startswith("/api/tasks/"))]
    deadline = time.monotonic() + 20
    while True:
        try:
            shown["worker /metrics"] = call(metrics_port, "GET", "/metrics", {"Host": "127.0.0.1"}).body.decode()
            break
        except OSError:
            assert worker.proc.poll() is None and time.monotonic() < deadline, worker.text()[-2000:]
            time.sleep(0.1)
    assert "tasks_engine_" in shown["worker /metrics"], shown["worker /metrics"][:500]
    shown["worker log"] = worker.text()
    leaks = {where: sorted(p for p in pieces if p in text) for where, text in shown.items()}
    assert not {where: found for where, found in leaks.items() if found}
    worker.proc.terminate()
    worker.proc.wait(10)


def test_password_in_url_query_is_redacted_too():
    """redis-py also reads ``?password=`` from the URL; that must be hidden as well."""
    previous = get_settings()
    try:
        configure(EngineSettings(REDIS_URL="redis://127.0.0.1:6379/0?password=hunter2-query&db=0"))
        assert "hunter2-query" not in redacted_url()
    finally:
        configure(previous)


def test_application_settings_repr_hides_every_secret(lab):
    """settings.py (what ``arq settings.WorkerSettings`` loads) with a secret in every place one can be."""
    probe = lab.procs["settings"]
    assert probe.proc.wait(60) == 0, probe.text()
    out = probe.text()
    assert "PROBE-DONE" in out and "Settings(" in out
    for secret in ("redis-secret-1", "signing-secret-2", "db-secret-3", "smtp-secret-4"):
        assert secret not in out, f"{secret!r} is shown by repr(settings)"


# ---------------------------------------------------------------- Redis with an ACL user
async def test_acl_user_restricted_to_the_key_prefix_end_to_end(lab, use):
    handle = lab.wait("acl")
    port = int(lab.urls["acl"].rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(sync_redis.exceptions.AuthenticationError):  # the default user is off
        sync_redis.Redis(port=port).ping()
    alice = sync_redis.Redis(port=port, username="alice", password=lab.acl_password)
    with pytest.raises(sync_redis.exceptions.NoPermissionError):  # and alice only has the prefix
        alice.set("elsewhere", 1)
    alice.close()
    settings = use(handle)
    assert await (await t.add.delay(2, 3)).get(timeout=15) == 5
    # Workflows too (Lua scripts, pub/sub, chord bookkeeping), all inside the allowed keys and channels.
    assert await (await chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()).apply_async()).get(timeout=15) == 6
    _assert_settings_hide(settings, lab.acl_password)
    log = handle.text()
    assert f"redis://***@127.0.0.1:{port}/0" in log and "alice" not in log  # the whole userinfo is hidden
    _assert_secret_hidden(lab.acl_password, log)


# ---------------------------------------------------------------- Redis over TLS
async def test_tls_redis_end_to_end_with_certificate_verification(lab, use):
    if lab.tls_skip:
        skip_or_fail_in_ci(lab.tls_skip)
    handle = lab.wait("tls")
    url = lab.urls["tls"]
    port = int(url.split("@127.0.0.1:")[1].split("/")[0])
    unverified = sync_redis.Redis.from_url(url.split("?")[0])  # system CAs only: our CA is unknown
    with pytest.raises(sync_redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        unverified.ping()
    unverified.close()
    plain = sync_redis.Redis(port=port, password=lab.password, socket_timeout=2)  # no plain-text port at all
    with pytest.raises(sync_redis.exceptions.RedisError):
        plain.ping()
    plain.close()
    settings = use(handle)
    assert await (await t.add.delay(2, 3)).get(timeout=15) == 5
    assert await (await chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()).apply_async()).get(timeout=15) == 6
    _assert_settings_hide(settings, lab.password)
    log = handle.text()
    assert f"rediss://***@127.0.0.1:{port}/0" in log
    _assert_secret_hidden(lab.password, log)


async def test_tls_redis_under_arq_hosting(lab, use):
    """``arq settings.WorkerSettings`` (the production entry point) on the same TLS + password Redis."""
    if lab.tls_skip:
        skip_or_fail_in_ci(lab.tls_skip)
    handle = lab.wait("arqtls")
    use(handle)
    assert await (await _send_builtin()).get(timeout=15) == []
    _assert_secret_hidden(lab.password, handle.text())


async def _send_builtin() -> AsyncResult:
    """A job for a worker that imports no task module (arq hosting ``settings.py``): a built-in task."""
    return await send_task("tasks_engine.starmap", args=["tasks_engine.starmap", []])


async def test_pickle_payloads_are_never_unpickled_by_a_worker_or_by_arq(lab, use):
    marker = lab.tmp / f"pwned-{uuid.uuid4().hex[:6]}"
    bomb = pickle.dumps(_Bomb(marker))
    # 1. in the engine's own queue, read by a tasks-engine worker
    handle = lab.wait("password")
    use(handle)
    broker = get_broker()
    await broker.redis.set(broker.key("msg", "bomb"), bomb)
    await broker.redis.zadd(broker.key("q", "default"), {"bomb": 5 * 10**12})
    await broker.redis.lpush(broker.key("wake", "default"), "1")
    exc = await AsyncResult("bomb").get(timeout=15, propagate=False)
    assert isinstance(exc, MessageError)
    await close_client(broker)
    # 2. in arq's own queue, read by arq hosting the engine (arq's default deserializer is pickle.loads)
    arq = lab.wait("arq")
    client = sync_redis.Redis.from_url(arq.url)
    job_id = f"bomb-{uuid.uuid4().hex[:6]}"
    try:
        client.set(f"arq:job:{job_id}", bomb, ex=60)
        client.zadd(f"{{{arq.prefix}}}:arq", {job_id: int(time.time() * 1000)})
        deadline = time.monotonic() + 15
        while client.zscore(f"{{{arq.prefix}}}:arq", job_id) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.zscore(f"{{{arq.prefix}}}:arq", job_id) is None, "arq never looked at the job"
    finally:
        client.delete(
            f"arq:job:{job_id}",
            f"arq:result:{job_id}",
            f"arq:in-progress:{job_id}",
            f"arq:retry:{job_id}",
            f"{{{arq.prefix}}}:arq",
        )
        client.close()
    time.sleep(0.3)
    assert not marker.exists(), "a pickle was loaded: code from Redis ran"
    assert arq.proc.poll() is None and handle.proc.poll() is None
    use(arq)
    assert await (await _send_builtin()).get(timeout=15) == []  # and both carry on


# ---------------------------------------------------------------- message signing
async def _rejected(task_id: str, reason: str) -> None:
    exc = await AsyncResult(task_id).get(timeout=15, propagate=False)
    assert isinstance(exc, MessageError) and reason in str(exc), exc
    assert await AsyncResult(task_id).state() == states.FAILURE
    broker = get_broker()
    dead = [orjson.loads(e) for e in await broker.redis.lrange(broker.key("dead"), 0, -1)]
    assert any(e["id"] == task_id and reason in e["reason"] for e in dead), f"{task_id} not dead-lettered"


async def test_signing_worker_rejects_unsigned_forged_and_tampered_messages(lab, use):
    handle = lab.wait("signing")
    right, other = SecretStr(lab.signing_key), SecretStr(f"other-{lab.signing_key}")
    ran = f"ran-{uuid.uuid4().hex[:6]}"  # demo.record appends here if a message ever runs

    use(handle, signing_key=right)  # a correctly configured client
    assert await (await t.add.delay(2, 3)).get(timeout=15) == 5
    assert await (await chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()).apply_async()).get(timeout=15) == 6
    # demo.flaky retries once: the retry is a message the worker itself signs.
    assert await (await t.flaky.delay(1, f"flaky-{uuid.uuid4().hex[:6]}", 1)).get(timeout=15) == 2
    tampered_src = t.record.s(ran, "tampered").to_enqueue([], Context())
    sig_src = t.record.s(ran, "signature").to_enqueue([], Context())
    body_src = t.record.s(ran, "body").to_enqueue([], Context())
    assert tampered_src.raw.startswith(b"te-sig2:")
    await close_client(get_broker())

    use(handle)  # a client without the key
    unsigned = await t.record.delay(ran, "unsigned")
    await _rejected(unsigned.id, "unsigned message rejected")
    await close_client(get_broker())

    use(handle, signing_key=other)  # a client with another key
    forged = await t.record.delay(ran, "forged")
    await _rejected(forged.id, "signature does not match")
    # Tampered: a correctly signed message whose body was changed in Redis.
    tampered = tampered_src.raw.replace(b'"tampered"', b'"changed!"')
    assert tampered != tampered_src.raw
    await get_broker().enqueue([Enqueue(tampered_src.id, tampered, "default", 5)])
    await _rejected(tampered_src.id, "signature does not match")
    # A genuine signature (and validity) moved onto another (genuine) message's body.
    head = b":".join(sig_src.raw.split(b":", 3)[:3])
    body = body_src.raw.split(b":", 3)[3]
    await get_broker().enqueue([Enqueue(body_src.id, head + b":" + body, "default", 5)])
    await _rejected(body_src.id, "signature does not match")
    await close_client(get_broker())

    use(handle, signing_key=right)
    broker = get_broker()
    assert await broker.redis.lrange(broker.key("test-log", ran), 0, -1) == [], "a rejected message ran"
    assert await (await t.record.delay(ran, "good")).get(timeout=15) == "good"  # the worker carries on
    assert handle.proc.poll() is None
    _assert_secret_hidden(lab.signing_key, handle.text())
    _assert_settings_hide(get_settings(), lab.signing_key)
