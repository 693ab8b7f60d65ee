"""The completion decision on its own: ``(message, task, attempt) → Completion``, no Redis involved.

Each case builds the message a worker would have claimed and checks what finishing it would write.
"""

from __future__ import annotations

from typing import Any

import pytest

import tests.sample_tasks as t
from tasks_engine import states
from tasks_engine.client.plan import Context
from tasks_engine.client.signature import Signature
from tasks_engine.core.codec import loads
from tasks_engine.exceptions import Retry, TaskRevokedError
from tasks_engine.execution.attempt import Attempt
from tasks_engine.model.messages import ChordRef, Message, decode
from tasks_engine.model.registry import get_task
from tasks_engine.runtime.completion import decide, rejected

NOW = 1_800_000_000.0


def message_of(sig: Signature, chain: list[Signature] | None = None, chord: ChordRef | None = None) -> Message:
    sig.freeze()
    for step in chain or []:
        step.freeze()
    return decode(sig.to_enqueue([], Context(chain_rest=chain or [], chord=chord)).raw)


def decided(msg: Message, attempt: Attempt) -> Any:
    return decide(msg, get_task(msg.task), attempt, "w1", now=NOW)


def test_success_records_the_value_and_acknowledges_for_good() -> None:
    msg = message_of(t.add.s(2, 3))
    c = decided(msg, Attempt("success", value=5))
    assert c.final and c.record is not None
    assert c.record["state"] == states.SUCCESS and loads(c.record["result"]) == 5
    assert c.record["worker"] == "w1" and c.record["root_id"] == msg.id
    assert not c.writes and not c.chord_parts and not c.failed_later and c.dead_letter is None


def test_success_plans_the_next_chain_step_with_the_value_first() -> None:
    second, third = t.add.s(10), t.add.s(100)
    msg = message_of(t.add.s(1, 1), chain=[second, third])
    c = decided(msg, Attempt("success", value=2))
    (step,) = c.writes.enqueues
    nxt = decode(step.raw)
    assert step.id == second.id and step.nx  # a re-delivered parent plans the same step, deduplicated
    assert nxt.args == [2, 10] and nxt.parent_id == msg.id and nxt.root_id == msg.root_id
    assert [d["options"]["task_id"] for d in nxt.chain] == [third.id]


def test_a_next_step_that_rejects_the_value_fails_the_parent_instead_of_looping() -> None:
    msg = message_of(t.add.s(1, 1), chain=[t.add.s(1, 2)])  # add(result, 1, 2): one argument too many
    c = decided(msg, Attempt("success", value=2))
    assert c.final and c.record is not None and c.record["state"] == states.FAILURE
    assert c.record["exc_type"] == "TypeError" and not c.writes.enqueues


def test_a_value_json_cannot_carry_is_a_failure_naming_the_task() -> None:
    msg = message_of(t.not_json.s())
    c = decided(msg, Attempt("success", value=object()))
    assert c.record is not None and c.record["state"] == states.FAILURE
    assert "demo.not_json" in c.record["exc_message"]


def test_header_part_reports_to_its_chord() -> None:
    msg = message_of(t.add.s(1, 1), chord=ChordRef(id="c1", index=3))
    (part,) = decided(msg, Attempt("success", value=2)).chord_parts
    assert (part.chord_id, part.task_id, part.index, part.ok, part.result_json) == ("c1", msg.id, 3, True, "2")


def test_retry_resends_the_same_id_later_without_finishing() -> None:
    msg = message_of(t.add.s(1, 1))
    retry = Retry(exc=ValueError("flaky"), when=30)
    retry.countdown, retry.new_args = 30, [7, 7]
    c = decided(msg, Attempt("retry", exc=ValueError("flaky"), retry=retry, traceback="tb"))
    assert not c.final and c.record is not None
    assert c.record["state"] == states.RETRY and c.record["retries"] == 1 and c.record["exc_type"] == "ValueError"
    (again,) = c.writes.enqueues
    resent = decode(again.raw)
    assert again.id == msg.id and again.eta_ms == int((NOW + 30) * 1000)
    assert resent.retries == 1 and resent.args == [7, 7]


def test_failure_calls_errbacks_and_fails_later_steps_and_the_chord() -> None:
    later = t.add.s(1)
    sig = t.fail.s()
    sig.link_error(t.errback.s())
    msg = message_of(sig, chain=[later], chord=ChordRef(id="c9", index=0))
    c = decided(msg, Attempt("failure", exc=ValueError("boom"), traceback="Traceback ..."))
    assert c.final and c.record is not None and c.record["state"] == states.FAILURE
    (errback,) = c.writes.enqueues
    assert decode(errback.raw).args[0] == msg.id  # the failed task's id first, as Celery passes it
    assert [i for i, _ in c.failed_later] == [later.id]
    assert c.failed_later[0][1]["state"] == states.FAILURE and c.failed_later[0][1]["parent_id"] == msg.id
    (part,) = c.chord_parts
    assert not part.ok and "ValueError('boom')" in part.error_text


def test_revoked_is_final_without_errbacks() -> None:
    sig = t.add.s(1, 1)
    sig.link_error(t.errback.s())
    c = decided(message_of(sig), Attempt("revoked", exc=TaskRevokedError("expired")))
    assert c.final and c.record is not None and c.record["state"] == states.REVOKED and not c.writes.enqueues


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_ignore_result_deletes_the_record_but_still_acks(outcome: str) -> None:
    msg = message_of(Signature("demo.add", (1, 1), options={"ignore_result": True}))
    c = decided(msg, Attempt(outcome, value=2, exc=ValueError("x") if outcome == "failure" else None))
    assert c.record is None and c.final


def test_idempotent_success_keeps_its_value_under_the_id() -> None:
    c = decided(message_of(t.charge.s("k")), Attempt("success", value="charged"))
    assert c.idempotent_value == '"charged"'


def test_a_success_after_retries_clears_the_earlier_exception() -> None:
    msg = message_of(Signature("demo.add", (1, 1), options={"retries": 2}))
    assert decided(msg, Attempt("success", value=2)).clear_exception


def test_undecodable_message_becomes_a_dead_letter_and_a_failure_record() -> None:
    c = rejected("id-1", b"\xff not json", "invalid message", "w1", None)
    assert c.final and c.record is not None and c.record["exc_type"] == "MessageError"
    entry = loads(c.dead_letter)
    assert entry["id"] == "id-1" and entry["reason"] == "invalid message"


def test_unknown_task_is_dead_lettered_and_fails_its_workflow() -> None:
    later = t.add.s(1)
    msg = message_of(Signature("nobody.has.this", (1,)), chain=[later])
    c = rejected(msg.id, b"{}", "task 'nobody.has.this' is not registered", "w1", msg)
    assert c.dead_letter is not None and c.record is not None and c.record["exc_type"] == "NotRegistered"
    assert [i for i, _ in c.failed_later] == [later.id]
