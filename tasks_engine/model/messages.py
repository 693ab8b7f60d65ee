"""The wire format: one JSON message per task call, validated by pydantic on both sides.

No pickle anywhere: a message is plain JSON, so whoever can write to Redis can at worst make a
task fail, never run code. With ``signing_key`` set, each message carries an HMAC and a worker
refuses unsigned or altered ones, and ones past the validity the signer wrote into the signed part::

    te-sig2:<valid until, epoch s>:<hex HMAC-SHA256 of "te-sig2:<valid until>:" + body>:<body>

so bytes captured from Redis cannot be replayed after that (within it, the finished job's record stops
them: see ``claim.lua``). Messages of the older ``te-sig1:<hmac of body>:<body>`` form are still read,
valid for the same time counted from their signed ``sent_at``/``eta``. Every decode refuses a message
over ``max_payload_bytes``, whoever wrote it.

JSON cannot carry NaN or ±Infinity; orjson and pydantic would quietly write ``null`` instead, so
:func:`encode` and :func:`dumps` refuse such values with a ``TypeError`` rather than lose them.

Compression (``compression="gzip"``, ``"zlib"`` or ``"bzip2"``, as in Celery) turns the message into a
small JSON envelope that stays readable by the Lua scripts (they look for ``task``, ``queue`` and
``expires``)::

    {"compression":"gzip","id":"…","task":"…","queue":"…","priority":5,"expires":null,"body":"<base64>",
     "sent_at":1700000000.0}

``body`` is the whole message, compressed, then base64 (the store keeps messages as text, like Celery's
Redis transport). A chord body is never compressed: Redis writes the header results into its first
argument. Signing covers the envelope; :func:`decode` checks the envelope against the message inside
and never inflates a body past ``max_payload_bytes``.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import hashlib
import hmac
import json
import time
import zlib
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticSerializationError, to_json

from tasks_engine.core.codec import non_finite_path
from tasks_engine.core.config import get_settings
from tasks_engine.exceptions import MessageError
from tasks_engine.model.registry import argument_label

#: A chord body is stored with this JSON string as its first argument; the chord-part script puts
#: the header results in its place when the chord fires.
CHORD_PLACEHOLDER = '"__te_chord_results__"'
CHORD_RESULTS = CHORD_PLACEHOLDER.strip('"')

_SIGNED_MARK = b"te-sig2:"
_SIGNED_MARK_V1 = b"te-sig1:"
#: A chord body is signed when the chord is sent and dispatched when its header finishes, which may be as
#: late as the chord's bookkeeping lives (``lib.lua`` te_apply: at least 7 days): it stays valid that long.
CHORD_BODY_VALIDITY = 7 * 86_400
_ARGS_OPEN = ',"args":['
_ENVELOPE_MARK = b'{"compression":'
_M = TypeVar("_M", bound=BaseModel)

Compression = Literal["gzip", "zlib", "bzip2"]
#: Compression methods and the content types Celery (kombu) names them by; both spellings are accepted.
COMPRESSIONS: dict[str, Compression] = {
    "gzip": "gzip",
    "application/x-gzip": "gzip",
    "zlib": "zlib",
    "application/x-zlib": "zlib",
    "bzip2": "bzip2",
    "application/x-bz2": "bzip2",
}
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "zlib": zlib.MAX_WBITS}


class ChordRef(BaseModel):
    """Where a task's (or its chain's) final result is reported: header position ``index`` of chord ``id``."""

    model_config = ConfigDict(frozen=True)
    id: str
    index: int


class Message(BaseModel):
    """One task call. Field order matters: ``id`` and ``task`` come first so Lua can read them cheaply,
    then ``queue`` and ``priority`` (before ``args``, which may hold a "queue" key of its own), then ``args``,
    where a chord body's placeholder is found again when checking its signature."""

    # "constants" writes NaN/Infinity as such (invalid JSON), so encode() can spot them cheaply and refuse.
    # cache_strings="keys": pydantic would otherwise keep every short string value it decodes (each job's
    # ids among them, never seen again) in its 16k-entry cache: 1.4 MB a worker holds for nothing.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants", cache_strings="keys")

    id: str
    task: str
    queue: str = "default"  # before args: Lua finds the first "queue" key, and args may contain one
    priority: int = Field(default=5, ge=0, le=9)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    retries: int = 0
    eta: float | None = None  # epoch seconds; None = now
    expires: float | None = None  # epoch seconds
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    links: list[dict[str, Any]] = Field(default_factory=list)
    link_errors: list[dict[str, Any]] = Field(default_factory=list)
    chain: list[dict[str, Any]] = Field(default_factory=list)  # the steps still to run after this one
    chord: ChordRef | None = None
    headers: dict[str, Any] = Field(default_factory=dict)
    sent_at: float = Field(default_factory=time.time)
    compression: Compression | None = None  # written only when set: plain messages keep their old form


class Envelope(BaseModel):
    """A compressed message as stored: what the Lua scripts read, in plain JSON, and the compressed rest."""

    model_config = ConfigDict(extra="forbid")

    compression: Compression  # first: a plain message starts with "id", so the two never look alike
    id: str
    task: str
    queue: str
    priority: int
    expires: float | None = None
    body: str
    sent_at: float  # last, as in a message: read from the end by the queue-wait view


def compression_of(task: str, value: Any) -> Compression | None:
    """A compression option (``"gzip"``, or kombu's ``"application/x-gzip"``, …) as its method, or None."""
    if value is None:
        return None
    method = COMPRESSIONS.get(value) if isinstance(value, str) else None
    if method is None:
        raise ValueError(f"task {task!r}: compression must be one of 'gzip', 'zlib', 'bzip2' or None, got {value!r}")
    return method


def _compress(method: Compression, data: bytes) -> bytes:
    if method == "bzip2":
        return bz2.compress(data)
    packer = zlib.compressobj(6, zlib.DEFLATED, _WBITS[method])
    return packer.compress(data) + packer.flush()


def _decompress(method: Compression, data: bytes, limit: int) -> bytes:
    """``data`` inflated, refusing anything that would grow past ``limit`` bytes (a decompression bomb)."""
    unpacker: Any = bz2.BZ2Decompressor() if method == "bzip2" else zlib.decompressobj(_WBITS[method])
    try:
        out: bytes = unpacker.decompress(data, limit + 1)
    except (OSError, ValueError, zlib.error, EOFError) as exc:
        raise MessageError(f"compressed message body is corrupt ({method}: {exc})") from None
    if len(out) > limit:
        raise MessageError(f"compressed message body inflates past max_payload_bytes={limit}; refused")
    if not unpacker.eof or unpacker.unused_data:
        raise MessageError(f"compressed message body is truncated or has trailing data ({method})")
    return out


def _signature(body: bytes, key: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode()


def signed_validity() -> int:
    """Seconds a signed message stays valid after it is sent or due (``signing_max_age``, else
    ``result_expires``: as long as the record that stops a replay within that time is kept)."""
    settings = get_settings()
    return settings.signing_max_age if settings.signing_max_age is not None else settings.result_expires


def _valid_until(sent_at: float, eta: float | None, chord_body: bool) -> int:
    validity = max(signed_validity(), CHORD_BODY_VALIDITY) if chord_body else signed_validity()
    return int(max(sent_at, eta or 0.0) + validity) + 1


def _unserializable(value: Any, path: str) -> str | None:
    try:
        to_json(value)
    except PydanticSerializationError:
        return path
    return None


_STEP_KINDS = {"chain": "later chain step", "links": "link", "link_errors": "link_error"}


def _locate(message: Message, bad: Callable[[Any, str], str | None]) -> str | None:
    """``task 'name': argument 'x'[0]`` for the first value ``bad`` objects to, workflow steps included."""
    places: list[tuple[str, str, str, Any]] = []  # (task, context, argument label, value)
    places += [(message.task, "", argument_label(message.task, i), v) for i, v in enumerate(message.args)]
    places += [(message.task, "", f"argument {k!r}", v) for k, v in message.kwargs.items()]
    for field, kind in _STEP_KINDS.items():
        for step in getattr(message, field):
            task = str(step.get("task", "?"))
            context = f" (a {kind} of {message.task!r})"
            args, kwargs = step.get("args"), step.get("kwargs")
            if isinstance(args, list) and isinstance(kwargs, dict):
                places += [(task, context, argument_label(task, i), v) for i, v in enumerate(args)]
                places += [(task, context, f"argument {k!r}", v) for k, v in kwargs.items()]
            places.append((task, context, "the step", step))
    places.append((message.task, "", "a header", message.headers))
    for task, context, label, value in places:
        found = bad(value, "")
        if found is not None:
            return f"task {task!r}{context}: {label}{found}"
    return None


def encode(message: Message) -> bytes:
    """Serialize (compress when the message asks for it, sign when a key is configured).

    Values JSON cannot carry (objects, NaN/Infinity, ...) raise ``TypeError`` naming task and argument.
    """
    return encode_sized(message)[0]


#: Written only when set: a plain call's message carries id, task, queue, priority, args, root_id and
#: sent_at (about half the bytes in Redis, less to encode and to validate); decoding fills the defaults.
_UNSET_WHEN_NONE = ("eta", "expires", "time_limit", "soft_time_limit", "ignore_result", "parent_id", "group_id",
                    "chord", "compression")  # fmt: skip
_UNSET_WHEN_EMPTY = ("kwargs", "links", "link_errors", "chain", "headers")


def encode_sized(message: Message) -> tuple[bytes, int]:
    """:func:`encode`, and the size of the message's JSON before compression (what a worker holds)."""
    exclude = {name for name in _UNSET_WHEN_NONE if getattr(message, name) is None}
    exclude.update(name for name in _UNSET_WHEN_EMPTY if not getattr(message, name))
    if message.retries == 0:
        exclude.add("retries")
    try:
        body = message.model_dump_json(exclude=exclude).encode()
    except PydanticSerializationError as exc:
        place = _locate(message, _unserializable) or f"task {message.task!r}: the message"
        raise TypeError(
            f"{place} is not JSON-serializable ({exc}); pass IDs or plain data (str, int, float, bool, list, dict)"
        ) from None
    if b"NaN" in body or b"Infinity" in body:  # else it was only text inside a string
        where = _locate(message, non_finite_path)
        if where is not None:
            raise TypeError(f"{where} is NaN or Infinity, which JSON cannot carry; pass a finite number or None")
    size = len(body)
    chord_body = bool(message.args) and message.args[0] == CHORD_RESULTS  # Redis rewrites it: keep it plain
    if message.compression and not chord_body:
        envelope = Envelope(
            compression=message.compression,
            id=message.id,
            task=message.task,
            queue=message.queue,
            priority=message.priority,
            expires=message.expires,
            body=base64.b64encode(_compress(message.compression, body)).decode(),
            sent_at=message.sent_at,
        )
        body = envelope.model_dump_json().encode()
    key = get_settings().signing_key
    if key is None:
        return body, size
    head = _SIGNED_MARK + b"%d:" % _valid_until(time.time(), message.eta, chord_body)
    return head + _signature(head + body, key.get_secret_value().encode()) + b":" + body, size


def encode_plain(
    task_id: str, task: str, queue: str, priority: int, args: list[Any], kwargs: dict[str, Any]
) -> bytes | None:
    """What :func:`encode` writes for a call that sets nothing but its arguments (no option, workflow,
    header or compression; ``root_id`` is its own id), built without the :class:`Message` model round trip.
    ``args``/``kwargs`` are JSON-ready (the task's argument check made them so). None when a value needs
    :func:`encode`'s own handling (not serializable, NaN/Infinity): it then says what is wrong."""
    try:
        values = to_json(args, inf_nan_mode="constants")
        named = to_json(kwargs, inf_nan_mode="constants") if kwargs else b""
    except PydanticSerializationError:
        return None
    if b"NaN" in values or b"Infinity" in values or b"NaN" in named or b"Infinity" in named:
        return None
    ident = task_id.encode()  # a new id: hex digits and dashes, nothing to escape
    body = b"".join((
        b'{"id":"', ident, b'","task":', to_json(task), b',"queue":', to_json(queue),
        b',"priority":%d,"args":' % priority, values, b',"kwargs":' + named if named else b"",
        b',"root_id":"', ident, b'","sent_at":', repr(time.time()).encode(), b"}",
    ))  # fmt: skip
    key = get_settings().signing_key
    if key is None:
        return body
    head = _SIGNED_MARK + b"%d:" % _valid_until(time.time(), None, False)
    return head + _signature(head + body, key.get_secret_value().encode()) + b":" + body


def _with_chord_placeholder(body: bytes) -> bytes | None:
    """The body as it was signed if this is a chord body whose first argument Redis filled in.

    The chord's header results are written into the body's first argument by a Lua script after
    signing (they are results, which live unsigned in Redis anyway). Put the placeholder back so
    the signature over everything else can be checked.
    """
    try:
        text = body.decode()
        decoder = json.JSONDecoder()
        if not text.startswith('{"id":'):
            return None
        _, pos = decoder.raw_decode(text, len('{"id":'))
        if not text.startswith(',"task":', pos):
            return None
        _, pos = decoder.raw_decode(text, pos + len(',"task":'))
        for field in (',"queue":', ',"priority":'):  # the fields between task and args (see Message)
            if text.startswith(field, pos):
                _, pos = decoder.raw_decode(text, pos + len(field))
        if not text.startswith(_ARGS_OPEN, pos):
            return None
        start = pos + len(_ARGS_OPEN)
        _, end = decoder.raw_decode(text, start)
    except ValueError:  # not UTF-8, or not JSON where JSON must be
        return None
    return (text[:start] + CHORD_PLACEHOLDER + text[end:]).encode()


def _verify(sig: bytes, head: bytes, body: bytes, key: bytes) -> bool | None:
    """True: ``head + body`` is what was signed; False: it is, with a chord body's placeholder put
    back (see above); None: the signature does not match."""
    if hmac.compare_digest(sig, _signature(head + body, key)):
        return True
    signed = _with_chord_placeholder(body)
    if signed is not None and hmac.compare_digest(sig, _signature(head + signed, key)):
        return False
    return None


def _split_signed(data: bytes) -> tuple[bytes, bytes, bytes, int | None]:
    """(signed head, signature, body, valid until) of a signed message; until is None for the old form."""
    if data.startswith(_SIGNED_MARK_V1):
        sig, sep, body = data[len(_SIGNED_MARK_V1) :].partition(b":")
        if not sep:
            raise MessageError("truncated signed message")
        return b"", sig, body, None
    until, sep, rest = data[len(_SIGNED_MARK) :].partition(b":")
    sig, sep2, body = rest.partition(b":")
    if not (sep and sep2) or not until.isdigit() or len(until) > 12:
        raise MessageError("truncated signed message")
    return data[: len(_SIGNED_MARK) + len(until) + 1], sig, body, int(until)


def decode(raw: bytes | str, expected_id: str | None = None) -> Message:
    """Parse, verify and validate a message; any problem is a :class:`MessageError` saying what.

    ``expected_id`` is the id the message was stored under: a message copied to another id is
    refused, otherwise its acknowledgement would go to the wrong job.
    """
    try:
        return _decode(raw, expected_id)
    except RecursionError:  # JSON nested deeper than any message of ours: forged or corrupt
        raise MessageError("message is nested too deeply to be one of ours") from None


def _decode(raw: bytes | str, expected_id: str | None) -> Message:
    data = raw.encode(errors="surrogatepass") if isinstance(raw, str) else raw
    settings = get_settings()
    limit = settings.max_payload_bytes
    if len(data) > limit:
        raise MessageError(f"message is {len(data)} bytes, over max_payload_bytes={limit}; refused unread")
    key = settings.signing_key
    until: int | None = None
    chord_body = False
    signed = data.startswith((_SIGNED_MARK, _SIGNED_MARK_V1))
    if signed:
        head, sig, body, until = _split_signed(data)
        if key is not None:
            verified = _verify(sig, head, body, key.get_secret_value().encode())
            if verified is None:
                raise MessageError("message signature does not match (tampered or signed with another key)")
            chord_body = not verified
            if until is not None and time.time() > until:
                raise MessageError(_stale(until))
        data = body
    elif key is not None:
        raise MessageError("unsigned message rejected: message signing is on")
    envelope = _envelope(data) if data.startswith(_ENVELOPE_MARK) else None
    if envelope is not None:
        try:
            packed = base64.b64decode(envelope.body, validate=True)
        except (binascii.Error, ValueError):
            raise MessageError("compressed message body is not base64") from None
        data = _decompress(envelope.compression, packed, get_settings().max_payload_bytes)
    message = _validated(Message, data)
    if envelope is not None:
        outside = (envelope.id, envelope.task, envelope.queue, envelope.priority, envelope.expires, envelope.sent_at)
        inside = (message.id, message.task, message.queue, message.priority, message.expires, message.sent_at)
        if outside != inside:
            raise MessageError("compressed message: its envelope does not match the message inside")
    if expected_id is not None and message.id != expected_id:
        raise MessageError(f"message id {message.id!r} does not match the id it was queued under ({expected_id!r})")
    if signed and key is not None and until is None:  # the old signed form: valid from its signed times
        until = _valid_until(message.sent_at, message.eta, chord_body)
        if time.time() > until:
            raise MessageError(_stale(until))
    return message


def _stale(until: int) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
    return (
        f"signed message expired at {when}: a replay of an old message, or one that waited longer than "
        "signing_max_age to run; refused"
    )


def _validated(model: type[_M], data: bytes) -> _M:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        raise MessageError(f"invalid message ({where}: {first.get('msg')})") from None


def _envelope(data: bytes) -> Envelope:
    return _validated(Envelope, data)


def peek_id(raw: bytes | str) -> str | None:
    """Best-effort id of an undecodable message, for the dead-letter record."""
    try:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        start = text.index('"id":"') + 6
        return text[start : text.index('"', start)]
    except ValueError:
        return None


def arq_job_serializer(obj: dict[str, Any]) -> bytes:
    """arq's ``job_serializer``: JSON instead of arq's default pickle."""
    return orjson.dumps(obj, default=str)


def arq_job_deserializer(raw: bytes) -> dict[str, Any]:
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise MessageError("arq job is not a JSON object")
    return value
