"""The reference door controller: obeys a command only when it verifies, reports every refusal.

:class:`Verifier` holds what a controller must check of each message on
``<prefix>/<door>/command``, in this order: not retained, signed with the
door's key, for this door, a nonce not seen before, a sequence number above the
last one obeyed, not expired, a lifetime of at most a minute and not issued in
the future. :class:`Controller` is a small MQTT client around it (``gate
controller --door NAME``): it drives a relay, publishes the lock's state signed
on ``<prefix>/<door>/state`` and each refusal on
``<prefix>/<door>/controller/rejected``. No torch, OpenCV or numpy here.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gate.actions.signing import new_nonce, next_sequence, seal, signature, unseal, write_private
from gate.config import MqttConfig
from gate.errors import ConfigError
from gate.messaging.homeassistant import LOCK_STATES

logger = logging.getLogger("gate.controller")

ACTIONS = ("unlock", "lock")


@dataclass(frozen=True)
class Verdict:
    """What a controller makes of one message: accepted, or the reason it was not."""

    accepted: bool
    reason: str
    detail: str = ""
    #: the verified message when accepted; otherwise what it claims, never to be trusted
    fields: dict[str, Any] = field(default_factory=dict)


def _claimed(payload: bytes) -> dict[str, Any]:
    """Whatever a rejected payload says of itself, for the report."""
    try:
        data = json.loads(payload)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    keep = ("action", "state", "door", "actor", "reason", "event_id", "seq", "expires_at")
    return {k: data[k] for k in keep if isinstance(data.get(k), str | int | float)}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Verifier:
    """Checks signed messages of one kind (``command`` or ``state``) for one door.

    ``last_seq`` is the sequence number of the last message accepted (persist
    it across restarts); ``clock`` gives epoch seconds.
    """

    def __init__(
        self,
        door: str,
        key: str,
        *,
        kind: str = "command",
        last_seq: int = 0,
        clock: Callable[[], float] = time.time,
        max_lifetime_s: float = 60.0,
        max_skew_s: float = 5.0,
        nonces: int = 256,
    ):
        self.door, self.key, self.kind = door, key, kind
        self.last_seq = last_seq
        self.clock = clock
        self.max_lifetime_s, self.max_skew_s = max_lifetime_s, max_skew_s
        self._seen: deque[str] = deque(maxlen=nonces)
        self._lock = threading.Lock()

    def check(self, payload: bytes, *, retained: bool = False) -> Verdict:
        """Accept ``payload`` (and remember its seq and nonce) or say why not."""
        with self._lock:
            verdict = self._check(payload, retained)
        if not verdict.accepted:
            return Verdict(False, verdict.reason, verdict.detail, _claimed(payload))
        return verdict

    def _check(self, payload: bytes, retained: bool) -> Verdict:
        if retained:
            return Verdict(False, "retained", "a retained message is never obeyed")
        parts = unseal(payload)
        if parts is None:
            return Verdict(False, "unsigned", "no signature")
        body, sig = parts
        if not hmac.compare_digest(signature(self.key, body), sig):
            return Verdict(False, "bad_signature", "not signed with this door's key")
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        problem = self._malformed(data)
        if problem:
            return Verdict(False, "malformed", problem)
        if data["door"] != self.door:
            return Verdict(False, "wrong_door", f"for door {data['door']!r}")
        if data["nonce"] in self._seen:
            return Verdict(False, "replayed", f"nonce of seq {data['seq']} already seen")
        if data["seq"] <= self.last_seq:
            return Verdict(False, "out_of_order", f"seq {data['seq']} <= last {self.last_seq}")
        now = self.clock()
        if now >= data["expires_at"]:
            return Verdict(False, "expired", f"expired {now - data['expires_at']:.3f} s ago")
        if data["expires_at"] - data["issued_at"] > self.max_lifetime_s:
            return Verdict(False, "too_long", f"valid for more than {self.max_lifetime_s:g} s")
        if data["issued_at"] > now + self.max_skew_s:
            return Verdict(False, "future", f"issued {data['issued_at'] - now:.1f} s ahead")
        self.last_seq = data["seq"]
        self._seen.append(data["nonce"])
        return Verdict(True, "accepted", fields=data)

    def _malformed(self, data: Any) -> str | None:
        if not isinstance(data, dict):
            return "not a JSON object"
        if data.get("type") != self.kind:
            return f"not a {self.kind}"
        if not isinstance(data.get("door"), str):
            return "no door"
        seq = data.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            return "no sequence number"
        if not isinstance(data.get("nonce"), str) or not 16 <= len(data["nonce"]) <= 64:
            return "no nonce"
        if not (_number(data.get("issued_at")) and _number(data.get("expires_at"))):
            return "no issued_at and expires_at"
        if self.kind == "command" and data.get("action") not in ACTIONS:
            return "unknown action"
        if self.kind == "state" and data.get("state") not in LOCK_STATES:
            return "unknown state"
        return None


def signed(kind: str, door: str, key: str, seq: int, ttl_s: float, **fields: Any) -> bytes:
    """A message of ``kind`` from a controller (state or report), signed, valid ``ttl_s``."""
    now = time.time()
    return seal(
        {"type": kind, "door": door, "issued_at": round(now, 3),
         "expires_at": round(now + ttl_s, 3), "seq": seq, "nonce": new_nonce(), **fields},
        key,
    )  # fmt: skip


class Relay(Protocol):
    """What drives the door: a GPIO line, a relay board, a smart lock's API."""

    def unlock(self, command: dict[str, Any]) -> None: ...

    def lock(self, command: dict[str, Any] | None) -> None: ...


class PrintRelay:
    """Drives nothing: prints each order (the default, for trying gate out)."""

    def __init__(self, door: str):
        self.door = door

    def unlock(self, command: dict[str, Any]) -> None:
        print(
            f"UNLOCK {self.door}: event {command.get('event_id')}, {command.get('reason')}, "
            f"person {command.get('person') or '-'}, actor {command.get('actor') or '-'}, "
            f"seq {command.get('seq')}",
            flush=True,
        )

    def lock(self, command: dict[str, Any] | None) -> None:
        print(f"LOCK {self.door}", flush=True)


def load_relay(spec: str, door: str) -> Relay:
    """``print``, or ``module:factory`` called with the door's name (a relay plugin)."""
    if spec == "print":
        return PrintRelay(door)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"relay {spec!r}: use 'print' or 'module:factory'")
    try:
        return getattr(importlib.import_module(module_name), attr)(door)
    except Exception as exc:  # a relay plugin that cannot start: one line, no traceback
        raise ConfigError(f"relay {spec!r} cannot start: {exc}") from None


def _load_last_seq(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["last_seq"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable controller state: {exc}") from None


class Controller:
    """An MQTT client for one door: verifies commands, drives a relay, reports, relocks."""

    def __init__(
        self,
        config: MqttConfig,
        door: str,
        key: str,
        relay: Relay | None = None,
        *,
        host: str | None = None,
        relock_s: float = 5.0,
        state_file: Path | None = None,
        client_id: str | None = None,
        credentials: tuple[str, str | None] | None = None,
    ):
        self.config, self.door, self.key = config, door, key
        self.relay = relay or PrintRelay(door)
        self.host = host or config.host or "127.0.0.1"
        self.relock_s = relock_s
        self.state_file = state_file
        base = f"{config.topic_prefix.rstrip('/')}/{door}"
        self.command_topic = f"{base}/command"
        self.state_topic = f"{base}/state"
        self.rejected_topic = f"{base}/controller/rejected"
        self.verifier = Verifier(door, key, last_seq=_load_last_seq(state_file))
        self._out_seq = 0
        self._seq_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client_id = client_id or f"{config.client_id}-controller-{door}"
        self._client = self._make_client(client_id, credentials)

    def _make_client(self, client_id: str, credentials: tuple[str, str | None] | None):
        from gate.messaging.mqtt import make_client

        client = make_client(self.config, client_id, credentials)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_message = self._on_message
        return client

    def _on_message(self, client, userdata, message) -> None:
        if message.topic != self.command_topic:  # brokers may hand out others' retained messages
            logger.debug("ignoring a message on %s", message.topic)
            return
        self.handle(message.payload, message.retain)

    def start(self, wait_s: float = 10.0) -> bool:
        """Connect in the background; True once subscribed within ``wait_s``."""
        self._client.connect_async(self.host, self.config.port, keepalive=self.config.keepalive_s)
        self._client.loop_start()
        return self._subscribed.wait(wait_s)

    def stop(self) -> None:
        """Lock the door (fail secure), disconnect."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.relay.lock(None)
        info = self._publish_state("LOCKED")
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(timeout=self.config.ack_timeout_s)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.warning("MQTT broker %s refused the controller: %s", self.host, reason_code)
            return
        client.subscribe(self.command_topic, qos=1)

    def handle(self, payload: bytes, retained: bool = False) -> Verdict:
        """Verify one message from the command topic and act on it, or report it."""
        verdict = self.verifier.check(payload, retained=retained)
        if not verdict.accepted:
            self._report(verdict, retained)
            return verdict
        command = verdict.fields
        self._save()
        logger.info(
            "%s %s: seq %s, event %s, %s, actor %s", command["action"], self.door,
            command["seq"], command.get("event_id"), command.get("reason"), command.get("actor"),
        )  # fmt: skip
        try:
            self._act(command)
        except Exception:
            logger.exception("the relay failed on %s for %s", command["action"], self.door)
        return verdict

    def _act(self, command: dict[str, Any]) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if command["action"] == "lock":
                self.relay.lock(command)
                self._publish_state("LOCKED")
                return
            self.relay.unlock(command)
            self._publish_state("UNLOCKED")
            self._timer = threading.Timer(self.relock_s, self._relock)
            self._timer.daemon = True
            self._timer.start()

    def _relock(self) -> None:
        with self._lock:
            self._timer = None
            self.relay.lock(None)
            self._publish_state("LOCKED")

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._out_seq = next_sequence(self._out_seq)
            return self._out_seq

    def _publish_state(self, state: str):
        payload = signed("state", self.door, self.key, self._next_seq(), 10.0, state=state)
        return self._client.publish(self.state_topic, payload, qos=1)

    def _report(self, verdict: Verdict, retained: bool) -> None:
        claimed = verdict.fields
        logger.warning(
            "rejected a command for %s: %s (%s); it claims action %s, actor %s, seq %s",
            self.door, verdict.reason, verdict.detail, claimed.get("action"),
            claimed.get("actor"), claimed.get("seq"),
        )  # fmt: skip
        payload = signed(
            "report", self.door, self.key, self._next_seq(), 60.0,
            reason=verdict.reason, detail=verdict.detail, retained=retained, claimed=claimed,
        )  # fmt: skip
        self._client.publish(self.rejected_topic, payload, qos=1)

    def _save(self) -> None:
        """Keep the last sequence number obeyed, so a restart does not obey a replay."""
        if self.state_file is None:
            return
        try:
            write_private(self.state_file, json.dumps({"last_seq": self.verifier.last_seq}))
        except OSError as exc:
            logger.error("cannot keep the last sequence number in %s: %s", self.state_file, exc)


def run_forever(controller: Controller, echo: Callable[[str], None] = print) -> None:
    """Run until interrupted (Ctrl-C or SIGTERM), then lock and disconnect."""
    import signal

    def terminate(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)
    try:
        if controller.start():
            echo(f"controller for {controller.door}: listening on {controller.command_topic}")
        else:
            echo(f"controller for {controller.door}: broker {controller.host} not reachable yet")
        while True:
            time.sleep(3600)
    finally:
        controller.stop()
