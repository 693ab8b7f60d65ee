"""The application's jobs: email, reports, batch work and maintenance (imported by the worker)."""
