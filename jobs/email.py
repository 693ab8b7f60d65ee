"""Email over SMTP (aiosmtplib): the guide's ``admin.send_email`` and a batch form.

Error policy (the guide's "robust task"):

* an invalid address, or a 5xx answer from the server (unknown mailbox, refused login, …), is
  permanent: the job fails at once, no retry (:class:`PermanentEmailError`);
* a connection error, a timeout or a 4xx answer (greylisting, mailbox busy) is transient: the job
  is retried with exponential backoff and full jitter (:class:`TransientEmailError`).

The retry goes through the engine's ``self.retry`` with the engine's backoff formula, but the cap
and the number of retries come from settings (``smtp_retry_backoff_max``, ``smtp_max_retries``)
instead of decorator constants, so a deployment (or a test) can tune them without code changes.

The SMTP password is a ``SecretStr``: it is unwrapped only to hand it to aiosmtplib and never
logged, stored in a result or put in an exception message.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal

import aiosmtplib
import structlog

from jobs.config import JobsSettings, job_settings
from tasks_engine import Task, shared_task
from tasks_engine.retries import backoff_countdown
from tasks_engine.store import get_broker

log = structlog.get_logger("jobs.email")

ContentType = Literal["html", "plain"]
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[^@\s]+$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
MAX_ATTACHMENT_BYTES = 5_000_000


class PermanentEmailError(Exception):
    """Retrying cannot help (bad address, 5xx): the job fails at once."""


class InvalidEmailAddressError(PermanentEmailError, ValueError):
    """The recipient is not a syntactically valid address; nothing was sent."""


class EmailRejectedError(PermanentEmailError):
    """The server answered 5xx (unknown user, refused sender, failed login, …)."""


class TransientEmailError(Exception):
    """Connection error, timeout or 4xx: worth retrying later."""


# --------------------------------------------------------------------- addresses and messages
def validate_address(value: str) -> str:
    """The address stripped, or :class:`InvalidEmailAddressError` (no display names, no header injection)."""
    address = value.strip()
    if not address or len(address) > 254 or any(c in address for c in '\r\n<>,;"') or not _ADDRESS.match(address):
        raise InvalidEmailAddressError(f"invalid email address: {value!r}")
    local, domain = address.rsplit("@", 1)
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidEmailAddressError(f"invalid email address: {value!r}") from None
    labels = ascii_domain.split(".")
    if len(local) > 64 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise InvalidEmailAddressError(f"invalid email address: {value!r}")
    return f"{local}@{ascii_domain}"


class _TextExtractor(HTMLParser):
    """Plain-text alternative of an HTML body, for clients that do not render HTML."""

    _BREAKS = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BREAKS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append("\t")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(content: str) -> str:
    parser = _TextExtractor()
    parser.feed(content)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def build_message(
    to_email: str,
    subject: str,
    content: str,
    content_type: ContentType = "html",
    settings: JobsSettings | None = None,
    attachments: Iterable[Path] = (),
) -> EmailMessage:
    """One message to one recipient: UTF-8 subject and body; HTML gets a plain-text alternative."""
    settings = settings or job_settings()
    if "\n" in subject or "\r" in subject:
        raise PermanentEmailError("subject must be a single line")
    sender = validate_address(settings.smtp_from_address)
    local, domain = sender.rsplit("@", 1)
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = Address(display_name=settings.smtp_from_name, username=local, domain=domain)
    msg["To"] = validate_address(to_email)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=domain)
    if content_type == "html":
        msg.set_content(html_to_text(content))
        msg.add_alternative(content, subtype="html")
    else:
        msg.set_content(content)
    for path in attachments:
        data = path.read_bytes()
        if len(data) > MAX_ATTACHMENT_BYTES:
            raise PermanentEmailError(f"attachment {path.name} is {len(data)} bytes, over {MAX_ATTACHMENT_BYTES}")
        maintype, subtype = _mime_of(path)
        params = {"charset": "utf-8"} if maintype == "text" else {}  # our CSVs are UTF-8 (with a BOM for Excel)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name, params=params)
    return msg


def _mime_of(path: Path) -> tuple[str, str]:
    if path.suffix == ".csv":
        return "text", "csv"
    if path.suffix == ".xlsx":
        return "application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return "application", "octet-stream"


# --------------------------------------------------------------------- SMTP
def security_mode(settings: JobsSettings) -> Literal["tls", "starttls", "none"]:
    """``auto``: implicit TLS on 465, STARTTLS on 587, plain otherwise (a local sink or relay)."""
    if settings.smtp_security != "auto":
        return settings.smtp_security
    return {465: "tls", 587: "starttls"}.get(settings.smtp_port, "none")  # type: ignore[return-value]


def smtp_client(settings: JobsSettings | None = None) -> aiosmtplib.SMTP:
    settings = settings or job_settings()
    mode = security_mode(settings)
    return aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        timeout=settings.smtp_timeout,
        use_tls=mode == "tls",
        start_tls=True if mode == "starttls" else False,
        validate_certs=settings.smtp_validate_certs,
        cert_bundle=settings.smtp_cert_bundle,
        local_hostname=settings.smtp_local_hostname,
    )


def classify(exc: BaseException) -> PermanentEmailError | TransientEmailError:
    """Our error for an SMTP/network failure; the message carries the server's words, never credentials."""
    if isinstance(exc, PermanentEmailError | TransientEmailError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        text = "; ".join(f"{r.code} {r.message} ({r.recipient})" for r in exc.recipients)
        return EmailRejectedError(text) if codes and all(c >= 500 for c in codes) else TransientEmailError(text)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = f"{exc.code} {exc.message}"
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            text = f"login refused: {text}"
        return EmailRejectedError(text) if exc.code >= 500 else TransientEmailError(text)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return TransientEmailError(f"timeout: {exc}")
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | ConnectionError | OSError):
        return TransientEmailError(f"connection failed: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException):
        return EmailRejectedError(str(exc))
    raise exc


def retry_countdown(retries: int, settings: JobsSettings) -> int:
    """The engine's backoff (factor 1: 1, 2, 4, … s) capped by ``smtp_retry_backoff_max``, jittered."""
    return backoff_countdown(1, retries, settings.smtp_retry_backoff_max, settings.smtp_retry_jitter)


def _retry(task: Task, exc: TransientEmailError, settings: JobsSettings) -> Exception:
    """What to raise for a transient failure: a Retry while retries are left, else the error itself."""
    retries = task.request.retries
    if task.request.called_directly or retries >= settings.smtp_max_retries:
        log.error("email delivery failed; no retries left", error=str(exc), retries=retries)
        return exc
    countdown = retry_countdown(retries, settings)
    log.warning(
        "email delivery deferred; will retry",
        error=str(exc),
        countdown=countdown,
        retries=retries,
        max_retries=settings.smtp_max_retries,
    )
    return task.retry(exc=exc, countdown=countdown, max_retries=settings.smtp_max_retries, throw=False)


async def deliver(message: EmailMessage, settings: JobsSettings | None = None) -> str:
    """Send one message on a fresh connection; returns the server's answer to DATA."""
    settings = settings or job_settings()
    log.debug(
        "smtp connect",
        host=settings.smtp_host,
        port=settings.smtp_port,
        security=security_mode(settings),
        username=settings.smtp_username,
        password=settings.smtp_password,
    )  # SecretStr prints as '**********'
    try:
        async with smtp_client(settings) as smtp:
            _, answer = await smtp.send_message(message)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise classify(exc) from None
    return answer


# --------------------------------------------------------------------- tasks
@shared_task(name="admin.send_email", bind=True, rate_limit="10/s", rate_limit_burst=10)
async def send_email_task(
    self: Task, to_email: str, subject: str, content: str, content_type: ContentType = "html"
) -> dict[str, Any]:
    """发送邮件任务: one message to ``to_email``; ``content`` is HTML unless ``content_type="plain"``."""
    settings = job_settings()
    log.info("sending email", to=to_email, attempt=self.request.retries + 1)
    message = build_message(to_email, subject, content, content_type, settings)
    try:
        answer = await deliver(message, settings)
    except TransientEmailError as exc:
        raise _retry(self, exc, settings) from None
    log.info("email sent", to=to_email, message_id=message["Message-ID"])
    return {
        "status": "success",
        "email": to_email,
        "message": "邮件发送成功",
        "message_id": message["Message-ID"],
        "server": answer,
    }


@shared_task(name="admin.send_batch_email", bind=True, rate_limit="30/m", rate_limit_burst=5)
async def send_batch_email(
    self: Task, to_emails: list[str], subject: str, content: str, content_type: ContentType = "html"
) -> dict[str, Any]:
    """One message per recipient over one connection; per-recipient failures are reported, not fatal.

    Each recipient's outcome is recorded in Redis under the job's id as soon as it is known, so a
    retry (after a dropped connection or a 4xx) sends only to recipients still pending: nobody gets
    the message twice.
    """
    settings = job_settings()
    outcomes = _Outcomes(None if self.request.called_directly else self.request.id, settings)
    await outcomes.load()
    recipients = list(dict.fromkeys(e.strip() for e in to_emails))
    pending: dict[str, str] = {}
    todo: list[tuple[str, EmailMessage]] = []
    for email in recipients:
        if email in outcomes.done:
            continue
        try:
            todo.append((email, build_message(email, subject, content, content_type, settings)))
        except PermanentEmailError as exc:
            await outcomes.record(email, f"failed:{exc}")
    if todo:
        try:
            async with smtp_client(settings) as smtp:
                for email, message in todo:
                    try:
                        await smtp.send_message(message)  # aiosmtplib resets the envelope after a refusal
                    except (aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPResponseException) as exc:
                        error = classify(exc)
                        if isinstance(error, PermanentEmailError):
                            await outcomes.record(email, f"failed:{error}")
                        else:
                            pending[email] = str(error)
                        if not smtp.is_connected:
                            break
                        continue
                    await outcomes.record(email, "sent")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            error = classify(exc)
            for email, _ in todo:
                if email in outcomes.done:
                    continue
                if isinstance(error, PermanentEmailError):
                    await outcomes.record(email, f"failed:{error}")
                else:
                    pending.setdefault(email, str(error))
        for email, _ in todo:  # a connection that dropped mid-way leaves the rest pending
            if email not in outcomes.done:
                pending.setdefault(email, "connection closed before sending")
    if pending:
        first = next(iter(pending.items()))
        deferred = TransientEmailError(f"{len(pending)} recipient(s) deferred, e.g. {first[0]}: {first[1]}")
        retry = _retry(self, deferred, settings)
        if retry is not deferred:
            raise retry
        for email, reason in pending.items():  # out of retries: these failed; the others keep their outcome
            await outcomes.record(email, f"failed:{reason}")
    errors = [
        {"email": e, "error": outcomes.done[e].removeprefix("failed:")}
        for e in recipients
        if outcomes.done.get(e, "").startswith("failed:")
    ]
    sent = sum(1 for e in recipients if outcomes.done.get(e) == "sent")
    log.info("batch email finished", total=len(recipients), sent=sent, failed=len(errors))
    return {"success": sent, "failed": len(errors), "total": len(recipients), "errors": errors}


class _Outcomes:
    """Per-recipient outcome of one batch job ("sent" / "failed:<reason>"), kept in Redis across retries."""

    def __init__(self, task_id: str | None, settings: JobsSettings) -> None:
        self.task_id = task_id
        self.ttl = settings.result_expires
        self.done: dict[str, str] = {}

    def _key(self) -> str:
        return get_broker().keys.app("batch-email", self.task_id or "")

    async def load(self) -> None:
        if self.task_id is not None:
            raw = await get_broker().redis.hgetall(self._key())
            self.done = {k.decode(): v.decode() for k, v in raw.items()}

    async def record(self, email: str, outcome: str) -> None:
        self.done[email] = outcome
        if self.task_id is not None:
            async with get_broker().redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(), email, outcome)
                pipe.expire(self._key(), self.ttl)
                await pipe.execute()


@shared_task(name="admin.send_report_email", bind=True, rate_limit="10/s", rate_limit_burst=10)
async def send_report_email(
    self: Task, report: dict[str, Any], to_email: str | None = None, subject: str | None = None
) -> dict[str, Any]:
    """Mail a finished report (the result of ``admin.generate_report``) with its file attached.

    The last step of ``report | email`` chains, e.g. the daily task summary.
    """
    settings = job_settings()
    to_email = to_email or settings.admin_email
    path = Path(report["path"])
    subject = subject or f"报表 {report.get('report_type', path.stem)}: {report['rows']} 行"
    summary = report.get("summary") or []
    rows_html = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in summary[:50]
    )
    header_html = "".join(f"<th>{html.escape(str(h))}</th>" for h in report.get("columns", []))
    body = (
        f"<h2>{html.escape(subject)}</h2><p>文件: {html.escape(path.name)} — {report['rows']} 行, "
        f"{report['bytes']} 字节, {report['seconds']} 秒</p>"
        + (f"<table border='1'><tr>{header_html}</tr>{rows_html}</table>" if summary else "")
    )
    attachments = [path] if path.exists() and path.stat().st_size <= MAX_ATTACHMENT_BYTES else []
    message = build_message(to_email, subject, body, "html", settings, attachments)
    try:
        await deliver(message, settings)
    except TransientEmailError as exc:
        raise _retry(self, exc, settings) from None
    return {
        "status": "success",
        "email": to_email,
        "message": "报表邮件发送成功",
        "attached": bool(attachments),
        "report": str(path),
    }
