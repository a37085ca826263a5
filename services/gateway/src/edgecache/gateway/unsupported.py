"""Request headers that ask for something the gateway does not do: refused with 501
``NotImplemented`` rather than silently ignored.

A client that sends ``x-amz-acl: public-read``, ``x-amz-server-side-encryption: AES256`` or
``x-amz-storage-class: GLACIER`` expects the object to be public, encrypted or archived;
storing it plainly and answering 200 would be a lie it cannot detect. The one value of each
that means "what we do anyway" is accepted: the canned ACL ``private`` (every object and
bucket belongs to the gateway's one owner, with ``FULL_CONTROL``: see GetBucketAcl and
GetObjectAcl) and the storage class ``STANDARD``.

:data:`REFUSED` is the one table of them; :func:`refuse_unsupported` checks a request
against it (all operations: SSE-C headers on a GET are as unsupported as on a PUT).
"""

from __future__ import annotations

from collections.abc import Mapping

from edgecache.common import errors

__all__ = ["REFUSED", "refuse_unsupported"]

#: header (or header prefix, ending in ``-``) → the one value accepted (``None``: none is),
#: compared case-insensitively
REFUSED: dict[str, str | None] = {
    "x-amz-acl": "private",
    "x-amz-grant-": None,  # -read, -write, -read-acp, -write-acp, -full-control
    "x-amz-server-side-encryption": None,  # SSE-S3 / SSE-KMS
    "x-amz-server-side-encryption-": None,  # -aws-kms-key-id, -context, -customer-*, …
    "x-amz-storage-class": "STANDARD",
    "x-amz-object-lock-": None,  # -mode, -retain-until-date, -legal-hold
    "x-amz-bucket-object-lock-enabled": "false",
    "x-amz-website-redirect-location": None,
}
_EXACT = {name: value for name, value in REFUSED.items() if not name.endswith("-")}
_PREFIXES = tuple((name, value) for name, value in REFUSED.items() if name.endswith("-"))
_FREE = "*"  # not in the table


def _accepted(name: str) -> str | None:
    """The value accepted for header ``name``: ``None`` for none, :data:`_FREE` if the
    table does not name it."""
    if name in _EXACT:
        return _EXACT[name]
    return next((value for prefix, value in _PREFIXES if name.startswith(prefix)), _FREE)


def refuse_unsupported(headers: Mapping[str, str]) -> None:
    """Raise for the first header of ``headers`` (names in lower case) that :data:`REFUSED`
    names with a value other than the accepted one.

    Raises:
        NotImplemented: the message names the header and its value.
    """
    for name, value in headers.items():
        if not name.startswith("x-amz-"):
            continue
        accepted = _accepted(name)
        if accepted == _FREE:
            continue
        if accepted is None or value.strip().lower() != accepted.lower():
            raise errors.NotImplementedError_(
                "A header you provided implies functionality that is not implemented: "
                f"{name}: {value}"
            )
