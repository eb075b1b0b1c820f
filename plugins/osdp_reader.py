"""Actuator ``osdp``: gate as a card reader on an access-control panel (OSDP, Secure Channel).

Per door, gate is an OSDP peripheral device on the door's wire (see
:mod:`gate_plugins.osdp_link`). A face granted becomes a card read carrying the
person's credential (``gate people set NAME --credential 26bit:12:34567``); the
panel decides and drives the door. Strangers send nothing, or, when the site
asks for it, an "unknown" card or keys so that the panel logs them. Commands
from the panel (LED, buzzer, text) are logged, published on
``<prefix>/<door>/osdp/command`` and shown in the live view; the link's state
is kept retained on ``<prefix>/<door>/osdp``. Secure Channel is required
unless a door says ``secure_channel = false`` (and gate says so at start).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, Literal

import click
from pydantic import Field, field_validator, model_validator

from gate import hookimpl
from gate.actions.signing import KeyStore, KeyStoreError
from gate.cli.base import App, pass_app
from gate.components import Actuator, ActuatorSetup, DoorCommand, StrictOptions
from gate.errors import ComponentError

if TYPE_CHECKING:
    from gate.doctor import Check
    from gate_plugins.osdp_link import LinkState, ReaderLink

logger = logging.getLogger("gate.osdp")

#: how long an "unknown" card read for a stranger may wait for the panel
UNKNOWN_TTL_S = 2.0
#: how long gate doctor waits for the panel's polls and secure channel
DOCTOR_WAIT_S = 8.0


class DoorLink(StrictOptions):
    """Where one door's reader meets its panel."""

    channel: str = Field(
        description="Serial device (/dev/ttyUSB0), tcp://HOST:PORT or tcp-listen://HOST:PORT."
    )
    address: int = Field(0, ge=0, le=126, description="The reader's OSDP address.")
    baud: int = Field(9600, description="Serial speed (9600 to 230400).")
    secure_channel: bool = Field(
        True, description="Require OSDP Secure Channel (false sends card reads in clear)."
    )

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        from gate_plugins.osdp_link import parse_channel

        parse_channel(value)
        return value

    @field_validator("baud")
    @classmethod
    def _baud(cls, value: int) -> int:
        from gate_plugins.osdp_link import BAUDS

        if value not in BAUDS:
            raise ValueError(f"{value}: one of {', '.join(map(str, sorted(BAUDS)))}")
        return value


class OsdpReader(Actuator):
    """One OSDP reader per door listed in ``[actuators.osdp.doors.<door>]``."""

    name = "osdp"
    description = "OSDP reader for access-control panels: a grant is a card read (Secure Channel)"
    presents_credentials = True

    class Options(StrictOptions):
        doors: dict[str, DoorLink] = Field(
            default_factory=dict, description="Each door's wire to its panel."
        )
        unknown: Literal["none", "card", "keypad"] = Field(
            "none", description="What a stranger sends the panel: nothing, a card or keys."
        )
        unknown_credential: str | None = Field(
            None, description="The card a stranger presents (unknown = card)."
        )
        start_wait_s: float = Field(
            5.0, ge=0, le=60, description="How long gate waits at start for the panels."
        )
        unknown_keys: str | None = Field(
            None, pattern=r"^[0-9*#]{1,16}$", description="Keys a stranger presses (keypad)."
        )

        @field_validator("unknown_credential")
        @classmethod
        def _credential(cls, value: str | None) -> str | None:
            from gate.actions.credentials import CredentialError, parse_credential

            try:
                return None if value is None else str(parse_credential(value))
            except CredentialError as exc:
                raise ValueError(str(exc)) from None

        @model_validator(mode="after")
        def _unknown_needs(self):
            if self.unknown == "card" and self.unknown_credential is None:
                raise ValueError("unknown = 'card' needs unknown_credential")
            if self.unknown == "keypad" and self.unknown_keys is None:
                raise ValueError("unknown = 'keypad' needs unknown_keys")
            return self

    def __init__(self, options=None):
        super().__init__(options)
        self.links: dict[str, ReaderLink] = {}
        self._setup: ActuatorSetup | None = None
        self._shown: dict[str, list[str]] = {}
        self._following = False

    # start and stop -------------------------------------------------------------------

    def start(self, setup: ActuatorSetup) -> None:
        """One reader per door of the run that has a wire; a door that needs a Secure Channel
        key and has none stops gate here, saying how to get one."""
        self._setup = setup
        if setup.one_off:
            return  # the running gate holds the wires
        keys = KeyStore(setup.keys_dir)
        try:
            for door in setup.doors:
                settings = self.options.doors.get(door.name)
                if settings is not None:
                    self._open(door.name, settings, keys)
        except ComponentError:
            self.close()
            raise
        deadline = time.monotonic() + self.options.start_wait_s
        for link in self.links.values():
            link.wait(lambda s, lk=link: lk.usable(), max(0.0, deadline - time.monotonic()))
            if link.now() != link.state:  # each door's link as gate starts, in the log
                link.report(link.now())

    def _open(self, door: str, settings: DoorLink, keys: KeyStore) -> None:
        from gate_plugins.osdp_link import ReaderLink, Wire

        try:
            scbk = keys.scbk(door, create=not settings.secure_channel)
        except KeyStoreError as exc:
            raise ComponentError(str(exc)) from None
        if not settings.secure_channel:
            logger.warning(
                "door %s: OSDP WITHOUT SECURE CHANNEL ([actuators.osdp.doors.%s] secure_channel "
                "= false): card reads cross the wire in clear, anyone on it can read or forge "
                "them",
                door,
                door,
            )
        link = ReaderLink(
            door,
            Wire(settings.channel, settings.baud),
            settings.address,
            scbk=scbk,
            secure=settings.secure_channel,
            on_command=lambda c: self._command(door, c),
            on_state=lambda s: self._state(door, s),
            verbose=logging.getLogger().level <= logging.DEBUG,
        )
        try:
            link.start()
        except OSError as exc:
            raise ComponentError(f"door {door}: {exc}") from None
        self.links[door] = link
        if not self._following:
            self._following = True
            try:  # the links' states again after every (re)connection to the broker
                self._setup.mqtt().on_connected(self._republish)
            except Exception as exc:
                logger.debug("OSDP link states not published: %s", exc)
        logger.info(
            "door %s: OSDP reader at address %d on %s%s: waiting for the panel",
            door,
            settings.address,
            settings.channel,
            ", secure channel required" if settings.secure_channel else "",
        )

    def close(self) -> None:
        for door in list(self.links):
            self._drop(door)

    def _drop(self, door: str) -> None:
        self.links.pop(door).close()
        self._publish_state(door, None)

    def doors_changed(self, doors: list) -> None:
        """Readers for doors added while gate runs; removed or disabled doors' readers stop."""
        if self._setup is None or self._setup.one_off:
            return
        names = {door.name for door in doors}
        for door in set(self.links) - names:
            self._drop(door)
        keys = KeyStore(self._setup.keys_dir)
        for door in sorted(names - set(self.links)):
            settings = self.options.doors.get(door)
            if settings is None:
                continue
            try:
                self._open(door, settings, keys)
            except ComponentError as exc:
                logger.error("door %s: no OSDP reader: %s", door, exc)

    # what gate decided ----------------------------------------------------------------

    def send(self, command: DoorCommand) -> bool | None:
        """A grant: the person's card read, taken by the panel before the command expires."""
        from gate.actions.credentials import CredentialError, parse_credential

        link = self.links.get(command.door)
        if link is None:
            if (
                self._setup is not None
                and self._setup.one_off
                and command.door in self.options.doors
            ):
                logger.warning(
                    "door %s is on an OSDP panel: gate can only present cards to it; open it "
                    "from the panel",
                    command.door,
                )
            return None
        if command.action != "unlock" or command.reason != "granted":
            logger.warning(
                "door %s: a %s (%s) has no OSDP card read; the panel holds the door",
                command.door,
                command.action,
                command.reason,
            )
            return False
        if command.credential is None:
            logger.error(
                "door %s: %s has no credential, so the panel was told nothing (gate people set "
                "%s --credential 26bit:FACILITY:CARD)",
                command.door,
                command.person,
                command.person,
            )
            return False
        try:
            credential = parse_credential(command.credential)
        except CredentialError as exc:
            logger.error("door %s: %s's credential: %s", command.door, command.person, exc)
            return False
        ok, why = link.present(credential, command.expires_at)
        if ok:
            logger.info(
                "door %s: card %s (%s) taken by the panel", command.door, credential, command.person
            )
        else:
            logger.warning(
                "door %s: card read for %s NOT delivered: %s", command.door, command.person, why
            )
        return ok

    def announce(self, event) -> None:
        """A stranger (reason ``unknown``) sends the site's "unknown" card or keys, if any."""
        link = self.links.get(event.door)
        if link is None or event.decision != "denied" or event.reason != "unknown":
            return
        if self.options.unknown == "none":
            return
        expires_at = time.time() + UNKNOWN_TTL_S
        if self.options.unknown == "card":
            from gate.actions.credentials import parse_credential

            what = f"unknown card {self.options.unknown_credential}"
            ok, why = link.present(parse_credential(self.options.unknown_credential), expires_at)
        else:
            what = "unknown keys"
            ok, why = link.keypad(self.options.unknown_keys, expires_at)
        if ok:
            logger.info("door %s: stranger (event %s): %s sent", event.door, event.id, what)
        else:
            logger.warning("door %s: stranger: %s not delivered: %s", event.door, what, why)

    # what the panel says ----------------------------------------------------------------

    def _command(self, door: str, command: dict[str, Any]) -> bool:
        from gate_plugins.osdp_link import Command, describe_command

        kind, words = describe_command(command)
        if command.get("command") == Command.Keyset:
            try:
                KeyStore(self._setup.keys_dir).set_scbk(door, bytes(command["data"]))
            except KeyStoreError as exc:
                logger.error("door %s: the panel's new secure channel key NOT kept: %s", door, exc)
                return False
            logger.warning("door %s: the panel set a new secure channel key (kept)", door)
        else:
            logger.info("door %s: panel: %s", door, words)
        fields = {k: v for k, v in command.items() if k not in ("command", "data")}
        if kind == "text":
            fields["text"] = command.get("data", "")
        payload = {"door": door, "kind": kind, "says": words, "time": time.time(), **fields}
        self._show(door, 1, f"panel: {words}")
        self._publish(door, "osdp/command", payload, retain=False)
        return True

    def _state(self, door: str, state: LinkState) -> None:
        secure = self.options.doors[door].secure_channel
        words = state.describe(secure)
        if state.usable(secure):
            logger.warning("door %s: OSDP reader ready: %s", door, words)
        else:
            logger.error("door %s: OSDP LINK DOWN: %s; the panel gets no card reads", door, words)
        self._show(door, 0, f"OSDP: {words}")
        self._publish_state(door, state)

    def _republish(self) -> None:
        for door, link in list(self.links.items()):
            self._publish_state(door, link.state)

    def _publish_state(self, door: str, state: LinkState | None) -> None:
        settings = self.options.doors[door]
        payload: dict[str, Any] = {
            "door": door,
            "address": settings.address,
            "channel": settings.channel,
            "secure_required": settings.secure_channel,
            "running": state is not None,
            "time": time.time(),
        }
        if state is None:
            payload.update(online=False, secure=False, says="gate stopped")
        else:
            payload.update(
                online=state.online,
                secure=state.secure,
                problem=state.problem,
                says=state.describe(settings.secure_channel),
            )
        self._publish(door, "osdp", payload, retain=True)

    def _publish(self, door: str, leaf: str, payload: dict[str, Any], *, retain: bool) -> None:
        if self._setup is None:
            return
        try:
            link = self._setup.mqtt()
            link.publish(
                link.topic(door, leaf), json.dumps(payload, sort_keys=True), qos=1, retain=retain
            )
        except Exception as exc:  # MQTT is news here: the reader works on without it
            logger.debug("door %s: %s not published: %s", door, leaf, exc)

    def _show(self, door: str, line: int, text: str) -> None:
        lines = self._shown.setdefault(door, ["", ""])
        lines[line] = text
        if self._setup is not None:
            self._setup.show(door, " | ".join(t for t in lines if t))

    # gate doctor ------------------------------------------------------------------------

    def diagnose(self, setup: ActuatorSetup, timeout: float) -> list[Check]:
        """Per door: its key, its wire, and whether the panel polls and holds a secure channel
        (when the wire is free), else the state the running gate keeps on MQTT."""
        from gate.doctor import Check

        checks = []
        keys = KeyStore(setup.keys_dir)
        for door, settings in sorted(self.options.doors.items()):
            name = f"osdp {door}"
            if settings.secure_channel:
                try:
                    scbk = keys.scbk(door)
                except KeyStoreError as exc:
                    checks.append(Check(name, "fail", str(exc), f"gate doors key {door} --osdp"))
                    continue
            else:
                scbk = None
            checks.append(self._probe(door, settings, scbk, setup, min(timeout, DOCTOR_WAIT_S)))
        return checks

    def _probe(self, door: str, settings: DoorLink, scbk: bytes | None, setup, wait: float):
        import errno

        from gate.doctor import Check
        from gate_plugins.osdp_link import ReaderLink, Wire

        where = f"{settings.channel} address {settings.address}"
        data = {"channel": settings.channel, "address": settings.address}
        wire = Wire(settings.channel, settings.baud)
        if wire.kind == "tcp":  # a converter may take a second client: ask a running gate first
            running = self._running_state(door, where, setup, data)
            if running is not None:
                return running
        try:
            wire.try_open()
        except OSError as exc:
            wire.close()
            busy = exc.errno in (errno.EBUSY, errno.EADDRINUSE) or "in use" in str(exc)
            if busy:
                return self._running_state(door, where, setup, data) or Check(
                    f"osdp {door}",
                    "warn",
                    f"{where}: in use by another process, and no running gate reports this "
                    "reader's link on MQTT",
                    "stop what holds the device, or see gate run's log",
                    data,
                )
            return Check(
                f"osdp {door}",
                "fail",
                f"{where}: {exc.strerror or exc}",
                "check the device path, its permissions (group dialout) and the adapter",
                data,
            )
        link = ReaderLink(
            door, wire, settings.address, scbk=scbk or keys_free(), secure=settings.secure_channel
        )
        link.start()
        try:
            link.wait(lambda s: s.online and (s.secure or not settings.secure_channel), wait)
            state = link.now()
        finally:
            link.close()
        says = state.describe(settings.secure_channel)
        data |= {"online": state.online, "secure": state.secure}
        if state.usable(settings.secure_channel):
            status = "ok" if settings.secure_channel else "warn"
            fix = "secure_channel = true, and the key in the panel (docs/osdp.md)"
            return Check(f"osdp {door}", status, f"{where}: {says}", fix, data)
        fix = (
            f"the panel must hold this door's key (gate doors key {door} --osdp) for the reader "
            f"at address {settings.address}"
            if state.online
            else "check the wiring (A/B, ground), the baud rate and the address the panel polls"
        )
        return Check(f"osdp {door}", "fail", f"{where}: {says} within {wait:g} s", fix, data)

    def _running_state(self, door: str, where: str, setup: ActuatorSetup, data: dict):
        """The link as a running gate reports it on MQTT; None when no running gate does."""
        import threading

        from gate.doctor import Check

        seen: list[dict] = []
        came = threading.Event()

        def on_state(message: Any) -> None:
            try:
                seen.append(json.loads(message.payload))
            except ValueError:
                return
            came.set()

        try:
            link = setup.mqtt()
            if link.wait_ready(2.0):
                link.subscribe(link.topic(door, "osdp"), on_state, raw=True)
                came.wait(2.0)
        except Exception as exc:
            logger.debug("reading the reader's state: %s", exc)
        if not seen or not seen[-1].get("running"):
            return None
        state = seen[-1]
        at = time.strftime("%H:%M:%S", time.localtime(state.get("time", 0)))
        good = state.get("online") and (state.get("secure") or not state.get("secure_required"))
        return Check(
            f"osdp {door}",
            "ok" if good else "fail",
            f"{where}: held by the running gate, which says: {state.get('says')} (at {at})",
            "see gate run's log and docs/osdp.md",
            data | {k: state.get(k) for k in ("online", "secure")},
        )


def keys_free() -> bytes:
    """A random key for a door that runs without Secure Channel (never installs one)."""
    import secrets

    return secrets.token_bytes(16)


@hookimpl
def register_actuators(register):
    register(OsdpReader)


@click.group("osdp")
def osdp_group() -> None:
    """gate as an OSDP reader on an access-control panel (docs/osdp.md)."""


@osdp_group.command("install")
@click.argument("door")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")
@pass_app
def osdp_install(app: App, door: str, timeout: float) -> None:
    """Take DOOR's secure channel key from its panel (install mode; gate must not run).

    The reader answers with the default install key (SCBK-D) until the panel
    sets a key of its own, which gate keeps (0600) for ``gate run``.
    """
    install_key(app, door, timeout)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(osdp_group)


def install_key(app, door: str, timeout: float) -> None:
    """``gate osdp install``: wait for the panel's KEYSET over a Secure Channel made with
    SCBK-D, keep the key, stop."""
    import threading

    from gate.actions.signing import keys_folder

    if app.db.door(door) is None:
        raise click.ClickException(f"no door called {door!r}")
    settings = app.pipeline.build("actuator", "osdp").options.doors.get(door)
    if settings is None:
        raise click.ClickException(f"door {door} has no [actuators.osdp.doors.{door}] channel")
    from gate_plugins.osdp_link import Command, ReaderLink, Wire

    keys = KeyStore(keys_folder(app.config, app.db.path))
    got = threading.Event()

    def on_command(command: dict[str, Any]) -> bool:
        if command.get("command") != Command.Keyset:
            return True
        try:
            keys.set_scbk(door, bytes(command["data"]))
        except KeyStoreError as exc:
            logger.error("the panel's key NOT kept: %s", exc)
            return False
        got.set()
        return True

    wire = Wire(settings.channel, settings.baud)
    link = ReaderLink(door, wire, settings.address, scbk=None, install=True, on_command=on_command)
    try:
        link.start()
    except OSError as exc:
        raise click.ClickException(f"door {door}: {exc}") from None
    click.echo(
        f"door {door}: INSTALL MODE on {settings.channel}, address {settings.address}: put the "
        "reader in install mode on the panel (or add it with a key) now",
        err=True,
    )
    try:
        if not got.wait(timeout):
            raise click.ClickException(
                f"no key from the panel within {timeout:g} s ({link.now().describe(True)})"
            )
        link.wait(lambda s: s.secure, 5.0)  # the ACK reaches the panel before we go
    finally:
        link.close()
    click.echo(f"door {door}: the panel's secure channel key kept in {keys.scbk_path(door)}")
