"""The task model as data and pure functions: states, task definitions and the registry, argument
checks, validation, retry countdowns, crontab schedules, rate-limit arithmetic, messages and records.

No I/O. Imports only ``core``; used by every layer above it.
"""
