"""Object keys <-> relative file paths, for the file origin. Pure functions, no I/O.

A key is split on ``/`` into segments; each segment becomes one path component (a long one
several). Plain segments map to themselves, so ``photos/2024/cat.jpg`` is the file
``photos/2024/cat.jpg``. The marker ``%`` escapes the rest:

=====================================  =====================================
segment                                component(s)
=====================================  =====================================
containing ``%``                       ``%`` written ``%25``
containing NUL                         NUL written ``%00``
``.`` / ``..``                         ``%2E`` / ``%2E%2E``
empty (``a//b``, ``/a``, ``a/``)       ``%``
over 249 bytes once escaped            pieces of at most 247 bytes, each but the last
                                       suffixed ``%+`` and followed by a ``/``
=====================================  =====================================

Names the encoding never produces for a segment are reserved for the layout:

* ``<component>%`` -- the *displaced* file of key ``k`` when ``k/...`` keys also exist, so
  the name ``k`` is a directory (see :mod:`edgecache.origin.file`);
* ``<component>%.json`` -- the metadata file beside a component, in the metadata tree.

Every escape is ``%`` + two upper-case hex digits, and only ``%25``, ``%00`` and ``%2E``
(the last only as a whole ``.``/``..`` segment) are canonical, so the mapping is injective
and :func:`parts_to_key` inverts it exactly, rejecting anything non-canonical. A component
is never empty, ``.``, ``..``, never holds ``/`` or NUL and never exceeds
:data:`MAX_NAME_BYTES`, so a path built from components stays inside its directory.
"""

from __future__ import annotations

__all__ = [
    "CONT_SUFFIX",
    "DISPLACED_SUFFIX",
    "EMPTY_SEGMENT",
    "MARK",
    "MAX_NAME_BYTES",
    "META_SUFFIX",
    "PIECE_BYTES",
    "decode_segment",
    "encode_segment",
    "key_to_parts",
    "parts_to_key",
    "unescape",
]

MARK = "%"
EMPTY_SEGMENT = "%"  # the component of an empty segment
DISPLACED_SUFFIX = "%"  # <component>%: a file displaced by a directory of the same name
CONT_SUFFIX = "%+"  # <piece>%+: a long segment continues in this directory
META_SUFFIX = "%.json"  # <component>%.json: metadata of the object at <component>
MAX_NAME_BYTES = 255 - len(META_SUFFIX)  # 249: room for any suffix within NAME_MAX (255)
PIECE_BYTES = MAX_NAME_BYTES - len(CONT_SUFFIX)  # 247

_ESCAPES = {"%": "%25", "\0": "%00"}
_UNESCAPES = {"25": "%", "00": "\0", "2E": "."}


def encode_segment(segment: str) -> str:
    """One key segment (no ``/``) as one escaped name, of any length (see the table above)."""
    if not segment:
        return EMPTY_SEGMENT
    if segment in (".", ".."):
        return "%2E" * len(segment)
    if "%" in segment or "\0" in segment:
        return "".join(_ESCAPES.get(ch, ch) for ch in segment)
    return segment


def unescape(text: str) -> str | None:
    """Undo the ``%XX`` escapes of a name or a piece of one.

    Returns:
        The text, or ``None`` if a ``%`` is not followed by ``25``, ``00`` or ``2E``.
    """
    if MARK not in text:
        return text
    head, *rest = text.split(MARK)
    out = [head]
    for chunk in rest:
        char = _UNESCAPES.get(chunk[:2])
        if char is None:
            return None
        out.append(char)
        out.append(chunk[2:])
    return "".join(out)


def decode_segment(name: str) -> str | None:
    """The segment whose canonical encoding is ``name``, or ``None`` if there is none."""
    segment = "" if name == EMPTY_SEGMENT else unescape(name)
    if segment is None or encode_segment(segment) != name:
        return None
    return segment


def _split(name: str) -> list[str]:
    """Cut an escaped name longer than MAX_NAME_BYTES into continued pieces."""
    if len(name) * 4 <= MAX_NAME_BYTES or len(name.encode()) <= MAX_NAME_BYTES:
        return [name]
    # tokens: one character, or one %XX escape, which must not be cut
    tokens: list[str] = []
    i = 0
    while i < len(name):
        step = 3 if name[i] == MARK else 1
        tokens.append(name[i : i + step])
        i += step
    sizes = [len(t.encode()) for t in tokens]
    remaining = sum(sizes)
    pieces: list[str] = []
    start = 0
    while remaining > MAX_NAME_BYTES:
        end, used = start, 0
        while used + sizes[end] <= PIECE_BYTES:
            used += sizes[end]
            end += 1
        pieces.append("".join(tokens[start:end]) + CONT_SUFFIX)
        remaining -= used
        start = end
    pieces.append("".join(tokens[start:]))
    return pieces


def key_to_parts(key: str) -> list[str]:
    """The relative path components of ``key``; the last one names the object's file.

    Deterministic and injective; ``key`` must be encodable as UTF-8 (no lone surrogates).
    """
    parts: list[str] = []
    for segment in key.split("/"):
        parts.extend(_split(encode_segment(segment)))
    return parts


def parts_to_key(parts: list[str]) -> str | None:
    """Invert :func:`key_to_parts`.

    Returns:
        The key, or ``None`` when ``parts`` is not exactly what :func:`key_to_parts` makes
        of any key (a foreign file name such as ``50%off``, a lower-case escape, a cut in
        the wrong place).
    """
    segments: list[str] = []
    pending = ""
    for index, part in enumerate(parts):
        if part.endswith(CONT_SUFFIX) and index < len(parts) - 1:
            pending += part[: -len(CONT_SUFFIX)]
            continue
        segment = decode_segment(pending + part)
        if segment is None:
            return None
        segments.append(segment)
        pending = ""
    if not segments:
        return None
    key = "/".join(segments)
    return key if key_to_parts(key) == parts else None
