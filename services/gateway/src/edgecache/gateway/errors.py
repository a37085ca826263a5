"""S3 errors only the gateway raises, as leaves of :class:`edgecache.common.errors.S3Error`.

They never cross NATS (they describe the HTTP request itself), so they live beside the
gateway rather than in the shared tree; the gateway renders them like any other S3Error.
"""

from __future__ import annotations

from edgecache.common.errors import S3Error

__all__ = [
    "IllegalLocationConstraintException",
    "InvalidURI",
    "MaxMessageLengthExceeded",
    "MetadataTooLarge",
]


class InvalidURI(S3Error):
    code, status, default_message = "InvalidURI", 400, "Couldn't parse the specified URI."


class MetadataTooLarge(S3Error):
    code, status = "MetadataTooLarge", 400
    default_message = "Your metadata headers exceed the maximum allowed metadata size."


class MaxMessageLengthExceeded(S3Error):
    code, status, default_message = "MaxMessageLengthExceeded", 400, "Your request was too big."


class IllegalLocationConstraintException(S3Error):
    code, status = "IllegalLocationConstraintException", 400
    default_message = (
        "The location constraint is incompatible for the region specific endpoint this "
        "request was sent to."
    )
