"""Where the engine meets other tools: arq's ``WorkerSettings`` (``arq_bridge``) and an embedded
redis-server for demos and tests (``embedded``).

Imports ``runtime`` and below; used by ``cli``, ``testing`` and ``tasks_engine`` itself.
"""
