"""Running one attempt of a task body (``attempt``) under its soft and hard time limits
(``timelimits``), the same way in a worker and in eager mode.

Imports ``model`` and ``core``, never the store; used by ``client`` (eager) and ``runtime``.
"""
