"""The application's jobs: email, reports, batch work and maintenance (imported by the worker).

``worker_settings(imports=["jobs"])`` and ``tasks-engine worker -I jobs`` import this package,
which registers every task below.
"""

from jobs import batch, email, maintenance, reports

__all__ = ["batch", "email", "maintenance", "reports"]
