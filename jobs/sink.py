"""A local SMTP sink (aiosmtpd) that keeps what it receives: for the demo and the tests.

``python -m jobs.sink`` runs one on ``TE_SMTP_HOST:TE_SMTP_PORT`` (127.0.0.1:8025, where the mail jobs
send by default) and prints a line per mail, until Ctrl-C or SIGTERM: the README's quick start uses it.

Not a mock: a real SMTP server on a loopback port, speaking the protocol aiosmtplib talks to.
Rules let it answer like real servers do: ``reject`` answers RCPT with a permanent 5xx,
``defer`` answers 4xx the first N times, ``credentials`` turns on AUTH (PLAIN/LOGIN).
"""

from __future__ import annotations

import email
import email.policy
import signal
import socket
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None = None
    tls: bool = False

    @property
    def message(self) -> EmailMessage:
        parsed: EmailMessage = email.message_from_bytes(self.data, policy=email.policy.default)
        return parsed


@dataclass
class SinkHandler:
    reject: dict[str, str] = field(default_factory=dict)
    defer: dict[str, int] = field(default_factory=dict)
    messages: list[Received] = field(default_factory=list)
    rcpt_attempts: list[str] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd hook
        self,
        server: Any,
        session: Any,
        envelope: Any,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        with self.lock:
            self.rcpt_attempts.append(address)
            if address in self.reject:
                return self.reject[address]
            if self.defer.get(address, 0) > 0:
                self.defer[address] -= 1
                return "451 4.3.0 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd hook
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        with self.lock:
            self.messages.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    bytes(envelope.content),
                    login,
                    tls=session.ssl is not None  # STARTTLS
                    or server.transport.get_extra_info("ssl_object") is not None,
                )
            )
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if address in m.rcpt_tos]


class SmtpSink:
    """``with SmtpSink(port=free_port()) as sink:`` … ``sink.handler.messages``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8025,
        handler: SinkHandler | None = None,
        credentials: tuple[str, str] | None = None,
        **smtp_options: Any,
    ) -> None:
        self.host, self.port = host, port
        self.handler = handler or SinkHandler()
        options = dict(smtp_options)
        if credentials is not None:
            user, password = credentials[0].encode(), credentials[1].encode()

            def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and data.login == user and data.password == password
                if ok:
                    with self.handler.lock:
                        self.handler.logins.append(data.login.decode())
                return AuthResult(success=ok, handled=False)

            options.update(authenticator=authenticate, auth_require_tls=False)
        self.controller = Controller(self.handler, hostname=host, port=port, **options)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def main() -> None:
    """Serve until interrupted, printing who sent what to whom (the mail itself stays in memory)."""
    from jobs.config import JobsSettings

    settings = JobsSettings()
    sink = SmtpSink(settings.smtp_host, settings.smtp_port).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"SMTP sink listening on {settings.smtp_host}:{settings.smtp_port} (Ctrl-C stops it)", flush=True)
    shown = 0
    try:
        while not stop.wait(0.1):
            with sink.handler.lock:
                new = sink.handler.messages[shown:]
            shown += len(new)
            for m in new:
                print(f"received from {m.mail_from} for {', '.join(m.rcpt_tos)}: {m.message['Subject']}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
