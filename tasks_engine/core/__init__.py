"""Foundations every layer uses: settings (``config``, ``redis_url``), time, ids, JSON (``codec``),
the worker context, logging and tracing.

Imports nothing of the engine but each other and ``tasks_engine.exceptions``; everything imports it.
"""
