"""Ids from users become one path segment of a Graph URL, never a path.

`quote(id, safe="")` encodes `/`, `?` and `#`, but leaves `.` and `..` alone, and an HTTP
client then removes them as dot segments: `GET /teams/../channels` would call
`GET /channels`. Graph, or a proxy in front of it, may decode `%2e` before resolving dot
segments, so an id that is a dot segment at any depth of percent-decoding is refused, as is
one that decodes to something holding a slash.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from tracecat.exceptions import BadRequestError

# Each level of encoding a client, a proxy and Graph might each undo once, and then some.
_MAX_DECODINGS = 8


def _is_path_like(value: str) -> bool:
    for _ in range(_MAX_DECODINGS):
        if value in ("", ".", "..") or "/" in value or "\\" in value:
            return True
        decoded = unquote(value)
        if decoded == value:
            return False
        value = decoded
    return True  # still changing after that many decodings: no real id looks like this


def require_segment(value: str, name: str) -> str:
    """`value` itself, if it can only ever mean one path segment; else a 400 naming `name`."""
    if _is_path_like(value):
        raise BadRequestError(
            f"{name} is not a valid id: an id cannot be empty, '.' or '..' "
            "(in any percent-encoding) or contain '/' or '\\'"
        )
    return value


def segment(value: str, name: str) -> str:
    """`value` checked and percent-encoded as one path segment of a Graph URL."""
    return quote(require_segment(value, name), safe="")
