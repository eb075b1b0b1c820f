"""A datasette plugin for ``gate log --browse``: face snapshots shown as thumbnails.

Loaded from this folder with ``datasette --plugins-dir``; not a module of gate.
"""

from __future__ import annotations

import base64

from datasette import hookimpl
from markupsafe import Markup

KINDS = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG": "image/png"}


@hookimpl
def render_cell(value, column, table):
    """An <img> for a JPEG or PNG snapshot of the events table; datasette's default otherwise."""
    if table != "events" or column != "snapshot" or not isinstance(value, bytes):
        return None
    kind = next((k for magic, k in KINDS.items() if value.startswith(magic)), None)
    if kind is None:
        return None
    data = base64.b64encode(value).decode("ascii")
    return Markup(
        f'<img src="data:{kind};base64,{data}" alt="face" '
        'style="max-height: 96px; max-width: 96px">'
    )
