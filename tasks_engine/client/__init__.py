"""What application code calls: ``Task`` and ``shared_task``, signatures and the canvas, sending
(``plan``: options → message → store), results, eager mode and the periodic scheduler (``beat``).

Imports ``execution``, ``store``, ``model`` and ``core``; used by ``runtime``, ``ops`` and the entry points.
"""
