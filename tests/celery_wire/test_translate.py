"""model/celery_wire.py on envelopes a real Celery app produced: what is read, and refusals that name the
field (pure: no worker; the envelopes are taken back from Redis after a real send)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis as sync_redis

from tasks_engine.model.celery_wire import Rejected, celery_side, translate
from tasks_engine.model.messages import Message
from tests.celery_wire.conftest import Wire
from tests.celery_wire.test_bad_input import staged


def read(envelope: dict[str, Any], queue: str = "q") -> Message | Rejected:
    return translate(json.dumps(envelope).encode(), queue)


def test_what_is_read_from_a_celery_message(wire: Wire, sync_client: sync_redis.Redis) -> None:
    env = staged(wire, sync_client, "cw.add", 1, 2, kwargs={"z": 1}, countdown=10, expires=60, priority=7,
                 time_limit=9, soft_time_limit=4, ignore_result=True)  # fmt: skip
    msg = read(env, "q")
    assert isinstance(msg, Message)
    assert (msg.task, msg.args, msg.kwargs, msg.queue, msg.priority) == ("cw.add", [1, 2], {"z": 1}, "q", 7)
    assert (msg.time_limit, msg.soft_time_limit, msg.ignore_result) == (9, 4, True)
    assert msg.eta is not None and msg.expires is not None and 49 < msg.expires - msg.eta < 51
    assert msg.root_id == msg.id == env["headers"]["id"] and not msg.links and not msg.chain
    side = celery_side(msg)
    assert side is not None and side["queue"] == "q" and side["reply_to"] == env["properties"]["reply_to"]


@pytest.mark.parametrize(
    ("header", "value", "words"),
    [
        ("retries", -1, "header 'retries'"),
        ("eta", "tomorrow", "header 'eta'"),
        ("expires", 12, "header 'expires'"),
        ("timelimit", [1, 2, 3], "header 'timelimit'"),
        ("timelimit", [-1, None], "hard limit"),
        ("id", "", "header 'id'"),
        ("task", "bad\nname", "name"),
    ],
)
def test_a_bad_header_is_refused_naming_it(
    wire: Wire, sync_client: sync_redis.Redis, header: str, value: Any, words: str
) -> None:
    env = staged(wire, sync_client, "cw.add", 1, 2)
    env["headers"][header] = value
    out = read(env)
    assert isinstance(out, Rejected) and words in out.reason, out
    assert out.task_id == env["headers"]["id"] or header == "id"
