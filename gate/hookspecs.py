"""Every hook a gate plugin may implement.

A plugin is a module (or object) with functions decorated by ``gate.hookimpl``.
Built-in plugins live in ``gate_plugins`` and are registered exactly like
third-party ones, which load from the ``gate`` entry-point group.

Hooks only grow by new arguments; an implementation may accept any subset of a
hook's arguments, by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from gate.components import Actuator, Detector, Encoder, Matcher
    from gate.config import GateConfig
    from gate.policy.access import AccessRequest, Verdict
    from gate.policy.liveness import LivenessVerdict, TrackFrame
    from gate.storage.events import AccessEvent

hookspec = pluggy.HookspecMarker("gate")
hookimpl = pluggy.HookimplMarker("gate")


@hookspec
def register_detectors(register: Callable[[type[Detector]], None]) -> None:
    """Offer face detectors: call ``register(DetectorClass)`` once per class.

    Called when gate first needs its components (the registry is built lazily,
    and built again after a plugin is registered or unregistered), one plugin
    at a time so that each component is credited to the plugin that offers it.
    Every answer is kept; a name that two plugins register is an error, never
    a silent override. Returns nothing.
    """


@hookspec
def register_encoders(register: Callable[[type[Encoder]], None]) -> None:
    """Offer face encoders (face -> embedding): call ``register(EncoderClass)``.

    Same rules as :func:`register_detectors`.
    """


@hookspec
def register_matchers(register: Callable[[type[Matcher]], None]) -> None:
    """Offer matchers (embedding -> enrolled person or unknown).

    Same rules as :func:`register_detectors`.
    """


@hookspec
def register_actuators(register: Callable[[type[Actuator]], None]) -> None:
    """Offer actuators, which carry unlock commands and decisions to the world.

    Same rules as :func:`register_detectors`. The config lists which are active.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands or groups to the ``gate`` command line.

    Called once when the CLI is made (:func:`gate.cli.make_cli`), with the
    top-level click group. Returns nothing.
    """


@hookspec
def access_decided(event: AccessEvent) -> None:
    """Observe every access decision, after it is logged and acted on.

    Called once per event (a face decided, an unlock or lock by hand or from
    home automation, a remote command refused), after the actuators announced
    it. A broadcast: every implementation is called, each on its own, so an
    exception in one observer is logged and neither stops the others nor
    changes the decision. Return values are ignored. ``event.id`` is the row id
    in the events table.
    """


@hookspec(firstresult=True)
def access_policy(request: AccessRequest) -> Verdict | None:
    """Decide whether a recognised, confirmed person may pass a door now.

    Called once per confirmed person, before anything is unlocked. The first
    implementation to return a :class:`gate.policy.access.Verdict` decides; return
    None to leave the decision to the next one. gate's built-in rules
    (``gate_plugins.rules``) run last (``trylast``), so a plugin can veto
    ("deny everyone while the alarm is armed") or allow ahead of them, or wrap
    them with ``wrapper=True``. An exception, or no answer at all, denies.
    """


@hookspec
def presentation_attack(
    door: str, person_id: int, frames: list[TrackFrame], config: GateConfig
) -> LivenessVerdict | None:
    """Check a face track for a presentation attack (a photo, a screen, a mask) before a grant.

    Called once per track that the recognition would grant, before the access
    policy, with the track's recent frames (oldest first). Every
    implementation is asked; return a :class:`gate.policy.liveness.LivenessVerdict`,
    or None to abstain. One ``attack`` verdict denies the grant (reason
    ``presentation_attack``), and so does an exception (``liveness_error``):
    a liveness check that fails never lets anyone in. ``config`` is the
    configuration of the run (a plugin reads its settings there).
    """
