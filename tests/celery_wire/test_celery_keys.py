"""store/celery_keys.py against the real kombu and Celery: which Redis key each priority lands in, the
ack-emulation keys a real kombu consumer writes, and the result backend's key names with prefixes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis as sync_redis
from celery import Celery
from kombu import Connection

from tasks_engine.store.celery_keys import CeleryKeys
from tests.celery_wire.celery_app import make_app
from tests.conftest import REDIS_URL


@pytest.fixture
def celery_prefix(sync_client: sync_redis.Redis) -> Iterator[str]:
    prefix = f"ck{uuid.uuid4().hex[:8]}:"
    yield prefix
    keys = list(sync_client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        sync_client.delete(*keys)


def test_each_priority_lands_in_the_key_celery_keys_names(celery_prefix: str, sync_client: sync_redis.Redis) -> None:
    app = make_app(celery_prefix, REDIS_URL)
    keys = CeleryKeys(transport_prefix=celery_prefix)
    for priority in range(10):
        before = {k: sync_client.llen(k) for k in keys.queues_by_priority("q")}
        app.send_task("cw.add", args=(1, 2), queue="q", priority=priority)
        grown = [k for k in keys.queues_by_priority("q") if sync_client.llen(k) > before[k]]
        assert grown == [keys.queue("q", priority)], priority
    assert keys.queue("q", 0) == f"{celery_prefix}q" and keys.queue("q", 4) == f"{celery_prefix}q\x06\x163"
    assert sync_client.smembers(keys.binding("q")) == {keys.binding_member("q", "q").encode()}
    app.close()


def test_a_kombu_consumer_keeps_unacked_messages_under_these_keys(
    celery_prefix: str, sync_client: sync_redis.Redis
) -> None:
    app = make_app(celery_prefix, REDIS_URL)
    keys = CeleryKeys(transport_prefix=celery_prefix)
    sent = app.send_task("cw.add", args=(1, 2), queue="uq")
    with Connection(REDIS_URL, transport_options={"global_keyprefix": celery_prefix}) as conn:
        queue = conn.SimpleQueue("uq", no_ack=False)
        message = queue.get(timeout=5)
        assert message.headers["id"] == sent.id
        tag = message.delivery_tag
        assert sync_client.hexists(keys.unacked, tag) and sync_client.zscore(keys.unacked_index, tag) is not None
        message.ack()
        assert not sync_client.hexists(keys.unacked, tag)
        queue.close()
    assert keys.unacked_mutex == celery_prefix + conn.default_channel.unacked_mutex_key
    app.close()


@pytest.mark.parametrize("prefix", ["", "app", "app:", "app_", "app-", "app."])
def test_result_keys_match_the_backend(prefix: str) -> None:
    app = Celery(broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    keys = CeleryKeys(backend_prefix=prefix)
    task_id = str(uuid.uuid4())
    assert keys.result(task_id) == app.backend.get_key_for_task(task_id).decode()
    assert keys.group("g1") == app.backend.get_key_for_group("g1").decode()
    assert keys.chord_results("g1") == app.backend.get_key_for_group("g1", ".j").decode()
    assert keys.chord_extra("g1") == app.backend.get_key_for_group("g1", ".t").decode()
    assert keys.chord_size("g1") == app.backend.get_key_for_group("g1", ".s").decode()
    app.close()
