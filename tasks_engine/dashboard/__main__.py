"""``python -m tasks_engine.dashboard [--host H] [--port P] [--read-only] [--allowed-host NAME ...]
[--forwarded-allow-ips IPS] [-I module ...]``.

Credentials come from ``TE_DASHBOARD_USERNAME``/``_PASSWORD`` or ``TE_DASHBOARD_TOKEN`` (never from the
command line, where every user of the machine could read them in the process list).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tasks_engine.dashboard.settings import DashboardConfigError


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks_engine.dashboard", description="Serve the web dashboard.")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; beyond loopback needs credentials)")
    parser.add_argument("--port", type=int, help="port (default 5555, as Flower)")
    parser.add_argument("--read-only", action="store_true", default=None, help="hide and refuse every action")
    parser.add_argument("--allowed-host", action="append", dest="allowed_hosts", default=None,
                        help="Host name browsers use besides loopback (repeatable)")  # fmt: skip
    parser.add_argument("--forwarded-allow-ips", help="proxies whose X-Forwarded-Proto is trusted (e.g. 127.0.0.1)")
    parser.add_argument("-I", "--imports", action="append", default=[], help="app module to import (beat schedule)")
    args = parser.parse_args(argv)
    from tasks_engine.dashboard.app import main

    try:
        main(args.host, args.port, read_only=args.read_only, imports=args.imports,
             allowed_hosts=args.allowed_hosts, forwarded_allow_ips=args.forwarded_allow_ips)  # fmt: skip
    except DashboardConfigError as exc:
        print(f"tasks-engine dashboard: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
