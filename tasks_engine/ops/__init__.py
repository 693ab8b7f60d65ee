"""Operating an app from outside its workers: inspection and remote control (``control``) and the
cluster-wide Prometheus metrics (``metrics``), read from and written to the store.

Imports ``client`` and below, never ``runtime``; used by ``cli`` and the dashboard.
"""
