"""Home Assistant MQTT discovery: the entities of a door and the topics they use.

Each door is one Home Assistant device with four entities: a lock (LOCK /
UNLOCK / OPEN), the last person recognised, the last decision with its reason,
and "face in view". They are available while gate runs (``<prefix>/status``) and the
door's camera gives frames (``<prefix>/<door>/availability``). The lock sends its
commands as JSON naming Home Assistant as the sender; when the site requires a
secret, Home Assistant asks for it as the lock's code (it is never in the
retained discovery messages).
"""

from __future__ import annotations

import json
import re

from gate import __version__
from gate.config import GateConfig

#: Home Assistant's default discovery prefix and the topic where it says it is online
DISCOVERY_PREFIX = "homeassistant"
STATUS_TOPIC = "homeassistant/status"

LOCK_COMMANDS = {"LOCK": "lock", "UNLOCK": "unlock", "OPEN": "unlock"}
#: what Home Assistant's lock publishes: the button, gate's name for it, the code if one is asked
COMMAND_TEMPLATE = (
    '{"action":"{{ value }}","actor":"home-assistant"'
    '{% if code %},"secret":{{ code | to_json }}{% endif %}}'
)
LOCK_STATES = ("LOCKED", "UNLOCKED", "JAMMED", "LOCKING", "UNLOCKING", "OPEN", "OPENING")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def door_topics(config: GateConfig, door: str) -> dict[str, str]:
    """The MQTT topics of one door (``<prefix>/<door>/...``)."""
    base = f"{config.mqtt.topic_prefix.rstrip('/')}/{door}"
    return {
        "command": f"{base}/command",
        "event": f"{base}/event",
        "controller_state": f"{base}/state",
        "lock_state": f"{base}/lock",
        "lock_set": f"{base}/lock/set",
        "person": f"{base}/person",
        "decision": f"{base}/decision",
        "face": f"{base}/face",
        "availability": f"{base}/availability",
    }


#: the retained topics gate keeps for a door (cleared when the door is removed)
STATE_TOPICS = ("lock_state", "person", "decision", "face", "availability", "controller_state")


def availability_topic(config: GateConfig) -> str:
    return f"{config.mqtt.topic_prefix.rstrip('/')}/status"


def discovery(
    config: GateConfig, door: str, *, prefix: str = DISCOVERY_PREFIX, ask_code: bool = False
) -> dict[str, dict]:
    """Discovery topic -> config payload for each entity of ``door``.

    ``prefix`` is Home Assistant's discovery prefix. ``ask_code``: Home
    Assistant asks for a code (the remote secret) on each lock command.
    """
    node = _slug(config.mqtt.topic_prefix)
    object_id = _slug(door)
    topics = door_topics(config, door)
    prefix = prefix.rstrip("/")
    common = {
        "availability": [  # both must say online: gate runs, and the door's camera gives frames
            {"topic": topic, "payload_available": "online", "payload_not_available": "offline"}
            for topic in (availability_topic(config), topics["availability"])
        ],
        "availability_mode": "all",
        "device": {
            "identifiers": [f"{node}_{object_id}"],
            "name": f"gate {door}",
            "manufacturer": "gate",
            "model": "face-recognition door",
            "sw_version": __version__,
        },
    }

    def entity(component: str, key: str, **fields) -> tuple[str, dict]:
        unique = f"{node}_{object_id}_{key}"
        return f"{prefix}/{component}/{node}/{object_id}_{key}/config", {
            "unique_id": unique,
            "object_id": unique,
            **fields,
            **common,
        }

    return dict(
        [
            entity(
                "lock",
                "lock",
                name="Lock",
                command_topic=topics["lock_set"],
                command_template=COMMAND_TEMPLATE,
                **({"code_format": ".+"} if ask_code else {}),
                state_topic=topics["lock_state"],
                payload_lock="LOCK",
                payload_unlock="UNLOCK",
                payload_open="OPEN",
                state_locked="LOCKED",
                state_unlocked="UNLOCKED",
                state_jammed="JAMMED",
                state_locking="LOCKING",
                state_unlocking="UNLOCKING",
                optimistic=False,
                qos=1,
            ),
            entity(
                "sensor",
                "person",
                name="Last person",
                state_topic=topics["person"],
                icon="mdi:account-check",
            ),
            entity(
                "sensor",
                "decision",
                name="Last decision",
                state_topic=topics["decision"],
                value_template="{{ value_json.decision }}",
                json_attributes_topic=topics["decision"],
                icon="mdi:door-closed-lock",
            ),
            entity(
                "binary_sensor",
                "face",
                name="Face in view",
                state_topic=topics["face"],
                payload_on="ON",
                payload_off="OFF",
                device_class="occupancy",
            ),
        ]
    )


def discovery_payloads(
    config: GateConfig, door: str, *, prefix: str = DISCOVERY_PREFIX, ask_code: bool = False
) -> dict[str, str]:
    """The retained messages that announce a door (JSON strings)."""
    return {
        topic: json.dumps(body, sort_keys=True)
        for topic, body in discovery(config, door, prefix=prefix, ask_code=ask_code).items()
    }


def removal_payloads(
    config: GateConfig, door: str, *, prefix: str = DISCOVERY_PREFIX
) -> dict[str, str]:
    """Empty retained messages that make Home Assistant forget a door and clear its states."""
    topics = door_topics(config, door)
    announced = discovery(config, door, prefix=prefix)
    return dict.fromkeys([*announced, *(topics[k] for k in STATE_TOPICS)], "")
