"""The worker: claiming and delivering jobs (``worker``, ``delivery``), the completion decision and
its commit, loop supervision, and the engine's own tasks (``builtins``).

Imports ``client`` and below; used only by the entry points (``cli``, ``integrations``, ``testing``),
never by ``ops`` or the dashboard.
"""
