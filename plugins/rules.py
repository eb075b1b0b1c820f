"""Policy ``rules``: gate's built-in access rules as the last ``access_policy`` answer."""

from __future__ import annotations

from gate import hookimpl
from gate.policy.access import AccessRequest, Verdict, builtin_policy


@hookimpl(trylast=True)
def access_policy(request: AccessRequest) -> Verdict:
    """Groups, doors, weekly hours, validity, enabled flag and anti-passback."""
    return builtin_policy(request)
