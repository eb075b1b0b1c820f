"""gate's built-in plugins, registered like third-party ones (import name ``gate_plugins``)."""
