"""A second, independent OSDP control panel: the pure-Python ``osdp`` package (ryanhz/osdp-python).

It installs a module called ``osdp`` as libosdp does, so it lives in a folder of its own
(``.venv/osdp-python``, made by ``make test``) and runs here as a script in a process of its
own: ``python tests/interop_panel.py PORT ADDRESS MASTER_KEY_HEX SECONDS``. It connects to a
reader listening on 127.0.0.1:PORT with Secure Channel and CRC, polls it, and prints one JSON
line per event: ``{"secure": true, "scbk_d": ...}`` once the Secure Channel stands,
``{"card": {"bits": N, "data": "hex", "format": "..."}}`` per card read. A reader in install
mode gets this panel's key for it (diversified from the master key) by KEYSET.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    from osdp import ControlPanel, TcpClientOsdpConnection

    port, address, master, seconds = sys.argv[1:5]
    address = int(address)

    def say(data: dict) -> None:
        print(json.dumps(data), flush=True)

    class Panel(ControlPanel):
        def on_raw_card_data_reply_received(self, address, raw):
            say(
                {
                    "card": {
                        "bits": raw.bit_count,
                        "data": raw.data.hex(),
                        "format": raw.format_code.name,
                    }
                }
            )

    panel = Panel(master_key=bytes.fromhex(master))
    bus = panel.start_connection(TcpClientOsdpConnection("127.0.0.1", int(port)))
    panel.add_device(connection_id=bus, address=address, use_crc=True, use_secure_channel=True)
    device = panel._buses[bus]._configured_devices[address]
    deadline = time.monotonic() + float(seconds)
    secure = None
    while time.monotonic() < deadline:
        now = device.is_security_established
        if now != secure:
            secure = now
            say({"secure": now, "scbk_d": device.is_scbkd})
        time.sleep(0.05)
    panel.shutdown()


if __name__ == "__main__":
    main()
