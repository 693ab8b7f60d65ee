"""Task states, named and grouped as in Celery so user code can compare against them."""

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"

#: A result in one of these states will not change any more.
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
#: ``get()`` raises the stored exception for these.
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED})
