"""MQTT: gate's link to the broker (:mod:`.mqtt`), the embedded broker (:mod:`.broker`)
and Home Assistant's discovery messages (:mod:`.homeassistant`)."""
