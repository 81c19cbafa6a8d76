"""Other programs' MQTT topics, spoken beside the gatekeeper's own (``compat:`` in the
config): mqtt-io's today (``compat.mqtt_io``)."""
