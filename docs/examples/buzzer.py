"""A buzzer on the door: the README's example of an actuator plugin (a test runs it)."""

from gate import hookimpl
from gate.components import Actuator


class Buzzer(Actuator):
    name = "buzzer"

    def send(self, command):
        # drive a relay here; return True once the door has been told
        print(f"buzz: {command.action} {command.door} for {command.person}")
        return True


@hookimpl
def register_actuators(register):
    register(Buzzer)
