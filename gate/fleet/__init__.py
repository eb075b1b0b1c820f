"""A fleet of gates on one MQTT broker (docs/fleet.md).

One **authority** manages people, groups, rules and doors and publishes them
as versioned messages signed with its Ed25519 key (:mod:`.authority`); every
**edge** applies them to its own SQLite file, so its doors decide with what it
holds when the link is down, and forwards its access log to the authority's
collector, exactly once per event (:mod:`.edge`). :mod:`.replica` says what an
object is and how an edge applies one; :mod:`.messages` signs and checks them.
"""
