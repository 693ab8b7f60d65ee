"""Issue 9, email: jobs/email.py through a real worker, Redis and a real SMTP server (aiosmtpd on loopback)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from email.header import decode_header
from pathlib import Path

import pytest
from pydantic import SecretStr

from jobs.config import JobsSettings
from jobs.email import (
    EmailRejectedError,
    InvalidEmailAddressError,
    TransientEmailError,
    security_mode,
    send_batch_email,
    send_email_task,
)
from jobs.sink import SinkHandler, SmtpSink, free_port
from tasks_engine import configure, states
from tasks_engine.client.task import registry
from tasks_engine.runtime.worker import Worker
from tests import jobs_support as support
from tests.conftest import running_worker
from tests.jobs_support import close_broker

SUBJECT = "测试邮件：你好，世界"
HTML = "<h1>欢迎</h1><p>你好，世界！这是一封 <b>HTML</b> 邮件。</p>"
PASSWORD = "s3cr3t-Pa55-word!"


def email_values() -> dict[str, object]:
    """What the email jobs need on top of the shared test settings (a fresh SMTP port each time)."""
    return {
        "task_routes": {"admin.send_*": "email"},
        "smtp_port": free_port(),
        "smtp_timeout": 2,
        "smtp_local_hostname": "localhost",
        "smtp_retry_backoff_max": 1,
        "smtp_max_retries": 20,
    }


def app_settings(prefix: str, tmp_path: Path, **overrides: object) -> JobsSettings:
    """This module's settings: the shared test settings plus what its jobs need."""
    return support.app_settings(prefix, tmp_path, **{**email_values(), **overrides})


@contextlib.asynccontextmanager
async def running(prefix: str, tmp_path: Path, sync_client, **overrides: object) -> AsyncIterator[JobsSettings]:
    """Settings with ``overrides`` and an in-process worker on both queues, for tests needing special settings."""
    async with support.configured(app_settings(prefix, tmp_path, **overrides), sync_client) as settings:
        async with running_worker(queues=["default", "email"]):
            yield settings


@pytest.fixture
async def app(prefix, sync_client, tmp_path) -> AsyncIterator[JobsSettings]:
    async with support.configured(app_settings(prefix, tmp_path), sync_client) as settings:
        yield settings


@pytest.fixture
async def app_worker(app) -> AsyncIterator[Worker]:
    async with running_worker(queues=["default", "email"]) as worker:
        yield worker


@pytest.fixture
def sink(app) -> Iterator[SmtpSink]:
    handler = SinkHandler(
        reject={"bounce@example.com": "550 5.1.1 <bounce@example.com>: no such user"}, defer={"busy@example.com": 2}
    )
    with SmtpSink(port=app.smtp_port, handler=handler) as s:
        yield s


def test_tasks_declare_the_error_policy_and_rate_limit():
    task = registry["admin.send_email"]
    assert task.rate is not None and task.options.rate_limit == "10/s"
    assert registry["admin.send_batch_email"].rate is not None
    for port, mode in ((465, "tls"), (587, "starttls"), (25, "none"), (8025, "none")):
        assert security_mode(JobsSettings(smtp_port=port)) == mode
    assert security_mode(JobsSettings(smtp_port=2525, smtp_security="starttls")) == "starttls"


async def test_send_email_delivers_utf8_html_message(app, app_worker, sink):
    r = await send_email_task.delay("alice@example.com", SUBJECT, HTML)
    result = await r.get(timeout=15)
    assert result["status"] == "success" and result["email"] == "alice@example.com"
    assert result["message"] == "邮件发送成功"
    info = await r.record()
    assert info["state"] == states.SUCCESS and info["retries"] == 0
    assert info["worker"] == app_worker.id

    [received] = sink.handler.messages
    assert received.mail_from == "noreply@example.com" and received.rcpt_tos == ["alice@example.com"]
    msg = received.message
    # Headers: the raw Subject is RFC 2047-encoded UTF-8 and decodes to the Chinese text.
    raw_subject = received.data.split(b"Subject: ", 1)[1].split(b"\r\n")[0]
    assert raw_subject.lower().startswith(b"=?utf-8?")
    assert (
        "".join(p.decode(c or "ascii") if isinstance(p, bytes) else p for p, c in decode_header(raw_subject.decode()))
        == SUBJECT
    )
    assert msg["Subject"] == SUBJECT
    assert msg["From"].addresses[0].display_name == "Py Small Admin"
    assert msg["From"].addresses[0].addr_spec == "noreply@example.com"
    assert msg["To"] == "alice@example.com"
    assert msg["Message-ID"] == result["message_id"] and msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    html_part = msg.get_body(preferencelist=("html",))
    plain_part = msg.get_body(preferencelist=("plain",))
    assert html_part.get_content_charset() == "utf-8"
    assert html_part.get_content().strip() == HTML
    assert "你好，世界！这是一封 HTML 邮件。" in plain_part.get_content()


async def test_invalid_address_fails_at_once_without_retry(app, app_worker, sink):
    r = await send_email_task.delay("not-an-address", SUBJECT, HTML)
    with pytest.raises(InvalidEmailAddressError, match="invalid email address"):
        await r.get(timeout=10)
    info = await r.record()
    assert info["state"] == states.FAILURE and info["retries"] == 0 and info["delivered"] == 1
    assert sink.handler.rcpt_attempts == [] and sink.handler.messages == []


async def test_5xx_rejection_fails_at_once_without_retry(app, app_worker, sink):
    r = await send_email_task.delay("bounce@example.com", SUBJECT, HTML)
    with pytest.raises(EmailRejectedError, match="550 5.1.1"):
        await r.get(timeout=10)
    info = await r.record()
    assert info["state"] == states.FAILURE and info["retries"] == 0
    assert sink.handler.rcpt_attempts == ["bounce@example.com"]  # asked once, never again


async def test_4xx_is_retried_with_backoff_then_delivered(app, app_worker, sink):
    r = await send_email_task.delay("busy@example.com", SUBJECT, HTML)  # the sink answers 451 twice
    assert (await r.get(timeout=15))["status"] == "success"
    info = await r.record()
    assert info["retries"] == 2
    assert sink.handler.rcpt_attempts == ["busy@example.com"] * 3
    assert len(sink.handler.to("busy@example.com")) == 1


async def test_timeout_is_transient(prefix, sync_client, tmp_path):
    """A server that accepts the connection and never greets: a timeout, recorded as RETRY."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        async with running(
            prefix,
            tmp_path,
            sync_client,
            smtp_port=port,
            smtp_timeout=0.3,
            smtp_retry_backoff_max=30,
            smtp_retry_jitter=False,
        ):
            r = await send_email_task.delay("alice@example.com", SUBJECT, HTML)
            deadline = time.monotonic() + 10
            while (await r.state()) != states.RETRY:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            info = await r.record()
            assert info["exc_type"] == "TransientEmailError" and "timeout" in info["exc_message"].lower()
            assert info["retries"] == 1
            await r.revoke()
    finally:
        silent.close()


async def test_out_of_retries_transient_errors_fail(prefix, sync_client, tmp_path):
    """smtp_max_retries=1: a server that stays down fails the single email after one retry; in a batch, the
    recipient still deferred is reported as failed while the others were delivered."""
    port = free_port()
    handler = SinkHandler(defer={"busy@example.com": 5})
    async with running(prefix, tmp_path, sync_client, smtp_port=port, smtp_max_retries=1):
        down = await send_email_task.delay("alice@example.com", SUBJECT, HTML)
        with pytest.raises(TransientEmailError, match="connection failed"):
            await down.get(timeout=10)
        assert (await down.record())["retries"] == 1
        with SmtpSink(port=port, handler=handler):
            r = await send_batch_email.delay(["a@example.com", "busy@example.com"], SUBJECT, HTML)
            result = await r.get(timeout=10)
    assert result["success"] == 1 and result["failed"] == 1 and result["total"] == 2
    assert result["errors"][0]["email"] == "busy@example.com" and "451" in result["errors"][0]["error"]
    assert handler.rcpt_attempts.count("busy@example.com") == 2 and len(handler.to("a@example.com")) == 1


async def test_server_down_job_retries_until_server_comes_up(app, app_worker):
    """No SMTP server at first: the job goes RETRY with a rising retries count, then succeeds once it is up."""
    r = await send_email_task.delay("alice@example.com", SUBJECT, HTML)
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 15
    while True:
        info = await r.record()
        if info["state"] == states.RETRY and (not seen or seen[-1] != (info["state"], info["retries"])):
            seen.append((info["state"], info["retries"]))
            assert info["exc_type"] == "TransientEmailError" and "connection failed" in info["exc_message"]
        if len({n for _, n in seen}) >= 2 and seen[-1][1] >= 2:
            break
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.01)
    retries_before = seen[-1][1]
    with SmtpSink(port=app.smtp_port) as sink:
        result = await r.get(timeout=15)
        assert result["status"] == "success"
        info = await r.record()
        assert info["state"] == states.SUCCESS and info["retries"] >= retries_before >= 2
        assert [n for _, n in seen] == sorted(n for _, n in seen)  # the counter only rises
        assert len(sink.handler.messages) == 1


async def test_batch_email_one_message_per_recipient_partial_failures(app, app_worker, sink):
    recipients = ["a@example.com", "b@example.com", "not-an-address", "bounce@example.com", "a@example.com"]
    r = await send_batch_email.delay(recipients, SUBJECT, HTML)
    result = await r.get(timeout=15)
    assert result["total"] == 4 and result["success"] == 2 and result["failed"] == 2
    errors = {e["email"]: e["error"] for e in result["errors"]}
    assert set(errors) == {"not-an-address", "bounce@example.com"}
    assert "invalid email address" in errors["not-an-address"] and "550" in errors["bounce@example.com"]
    for address in ("a@example.com", "b@example.com"):
        [m] = sink.handler.to(address)
        assert m.rcpt_tos == [address] and m.message["To"] == address and m.message["Subject"] == SUBJECT


async def test_batch_email_retry_does_not_resend_to_delivered_recipients(app, app_worker, sink):
    # busy@ is deferred (451) twice: the job retries, and each retry sends only to busy@.
    r = await send_batch_email.delay(
        ["a@example.com", "busy@example.com", "b@example.com"], SUBJECT, "纯文本内容", content_type="plain"
    )
    result = await r.get(timeout=20)
    assert result == {"success": 3, "failed": 0, "total": 3, "errors": []}
    assert (await r.record())["retries"] == 2
    for address in ("a@example.com", "busy@example.com", "b@example.com"):
        assert len(sink.handler.to(address)) == 1, address
    assert sink.handler.to("a@example.com")[0].message.get_content().strip() == "纯文本内容"


def _tls_files(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_tls_modes_deliver_over_encrypted_connection(prefix, sync_client, tmp_path, mode):
    cert, key = _tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    port = free_port()
    options = {"tls_context": context, "require_starttls": True} if mode == "starttls" else {"ssl_context": context}
    with SmtpSink(port=port, **options) as sink:
        # The client verifies the server's certificate against the test CA file (no validate_certs=False).
        async with running(
            prefix, tmp_path, sync_client, smtp_port=port, smtp_security=mode, smtp_cert_bundle=str(cert)
        ):
            r = await send_email_task.delay("alice@example.com", SUBJECT, HTML)
            assert (await r.get(timeout=15))["status"] == "success"
    [m] = sink.handler.messages
    assert m.tls and m.message["Subject"] == SUBJECT


async def test_password_never_in_logs_or_results(app, spawn_worker, sync_client, tmp_path, prefix, capfd):
    """A worker subprocess logging at DEBUG logs in with the password; neither its log nor anything in
    Redis contains it. A wrong password is a 5xx: FAILURE at once, and the error does not echo it."""
    forms = [
        PASSWORD.encode(),
        base64.b64encode(f"\0smtp-user\0{PASSWORD}".encode()),
        base64.b64encode(PASSWORD.encode()),
    ]
    with SmtpSink(
        port=app.smtp_port,
        credentials=("smtp-user", PASSWORD),
        handler=SinkHandler(reject={"bounce@example.com": "550 5.1.1 no such user"}),
    ) as sink:
        proc = spawn_worker(
            "-Q",
            "default,email",
            imports="jobs",
            env={
                "TE_SMTP_PORT": app.smtp_port,
                "TE_SMTP_USERNAME": "smtp-user",
                "TE_SMTP_PASSWORD": PASSWORD,
                "TE_LOG_LEVEL": "DEBUG",
                "TE_SMTP_LOCAL_HOSTNAME": "localhost",
            },
        )
        ok = await send_email_task.delay("alice@example.com", SUBJECT, HTML)
        bounced = await send_email_task.delay("bounce@example.com", SUBJECT, HTML)
        assert (await ok.get(timeout=20))["status"] == "success"
        with pytest.raises(EmailRejectedError):
            await bounced.get(timeout=20)
        assert sink.handler.logins == ["smtp-user", "smtp-user"]
        proc.terminate()
        assert proc.wait(timeout=15) == 0

        # The same server, a wrong password, an in-process worker: refused login = permanent.
        await close_broker()
        wrong = SecretStr("wrong-" + PASSWORD)
        configure(app.model_copy(update={"smtp_username": "smtp-user", "smtp_password": wrong}))
        w = Worker(queues=["default", "email"], beat=False)
        await w.start(handle_signals=False)
        try:
            refused = await send_email_task.delay("alice@example.com", SUBJECT, HTML)
            with pytest.raises(EmailRejectedError, match="login refused: 535"):
                await refused.get(timeout=15)
            assert (await refused.record())["retries"] == 0
        finally:
            await w.stop(grace=1)
    log_text = (tmp_path / "worker-0.log").read_bytes()
    assert b"email sent" in log_text
    assert b"smtp connect" in log_text and b"username=smtp-user" in log_text  # DEBUG lines were written
    captured = capfd.readouterr()
    everything = [log_text, captured.out.encode(), captured.err.encode()]
    for key in sync_client.scan_iter(match=f"{{{prefix}}}:*", count=1000):
        kind = sync_client.type(key)
        if kind == b"hash":
            everything.extend(v for kv in sync_client.hgetall(key).items() for v in kv)
        elif kind == b"string":
            everything.append(sync_client.get(key) or b"")
        elif kind == b"list":
            everything.extend(sync_client.lrange(key, 0, -1))
    for blob in everything:
        for form in forms:
            assert form not in blob
    assert any(b"login refused" in blob for blob in everything)  # the failure itself is recorded
