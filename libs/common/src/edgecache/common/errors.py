"""The error tree: one exception class per S3 error code.

Every error that can reach a client is an :class:`S3Error` whose ``code`` and
``status`` are the S3 API's. Lower-layer errors (botocore ``ClientError``,
Azure ``ResourceNotFoundError``, NATS timeouts) are mapped to these where they
arise. Errors cross NATS as ``wire.Error`` (code and message) and are rebuilt
here with :func:`from_code`; the gateway renders one XML body for all of them.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AccessDenied",
    "AuthorizationHeaderMalformed",
    "AuthorizationQueryParametersError",
    "BadDigest",
    "BucketAlreadyExists",
    "BucketAlreadyOwnedByYou",
    "BucketNotEmpty",
    "ConditionalRequestConflict",
    "EntityTooLarge",
    "EntityTooSmall",
    "IllegalLocationConstraintException",
    "IncompleteBody",
    "IncorrectNumberOfFilesInPostRequest",
    "InternalError",
    "InvalidAccessKeyId",
    "InvalidArgument",
    "InvalidBucketName",
    "InvalidChunkSizeError",
    "InvalidDigest",
    "InvalidPart",
    "InvalidPartNumber",
    "InvalidPolicyDocument",
    "InvalidPartOrder",
    "InvalidRange",
    "InvalidRequest",
    "InvalidURI",
    "KeyTooLongError",
    "MalformedPOSTRequest",
    "MalformedXML",
    "MaxMessageLengthExceeded",
    "MetadataTooLarge",
    "MethodNotAllowed",
    "MissingContentLength",
    "NoSuchBucket",
    "NoSuchKey",
    "NoSuchUpload",
    "NotImplementedError_",
    "PreconditionFailed",
    "RequestHeaderSectionTooLarge",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "S3Error",
    "ServiceUnavailable",
    "SignatureDoesNotMatch",
    "SlowDown",
    "XAmzContentSHA256Mismatch",
    "from_code",
    "InvalidTag",
]


class S3Error(Exception):
    """Base of every error a client can see.

    Attributes:
        code: the S3 error code, e.g. ``NoSuchKey``.
        status: the HTTP status the gateway answers with.
        message: human-readable text for ``<Message>``.
        resource: the bucket or ``bucket/key`` concerned, for ``<Resource>``.
        retry_after_s: seconds a client should wait before retrying, sent as
            ``Retry-After`` (only for 503s).
    """

    code: ClassVar[str] = "InternalError"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "We encountered an internal error. Please try again."

    def __init__(
        self,
        message: str | None = None,
        *,
        resource: str = "",
        retry_after_s: int | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.resource = resource
        self.retry_after_s = retry_after_s
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, resource={self.resource!r})"


class InternalError(S3Error):
    code, status = "InternalError", 500


# -- authentication ---------------------------------------------------------------------------
class AccessDenied(S3Error):
    code, status, default_message = "AccessDenied", 403, "Access Denied"


class InvalidAccessKeyId(S3Error):
    code, status = "InvalidAccessKeyId", 403
    default_message = "The AWS Access Key Id you provided does not exist in our records."


class SignatureDoesNotMatch(S3Error):
    code, status = "SignatureDoesNotMatch", 403
    default_message = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method."
    )


class AuthorizationHeaderMalformed(S3Error):
    code, status = "AuthorizationHeaderMalformed", 400
    default_message = "The authorization header you provided is invalid."


class AuthorizationQueryParametersError(S3Error):
    code, status = "AuthorizationQueryParametersError", 400
    default_message = "The authorization query parameters you provided are invalid."


class RequestTimeTooSkewed(S3Error):
    code, status = "RequestTimeTooSkewed", 403
    default_message = "The difference between the request time and the current time is too large."


# -- payload integrity ------------------------------------------------------------------------
class XAmzContentSHA256Mismatch(S3Error):
    code, status = "XAmzContentSHA256Mismatch", 400
    default_message = "The provided 'x-amz-content-sha256' header does not match what was computed."


class BadDigest(S3Error):
    code, status = "BadDigest", 400
    default_message = "The Content-MD5 or checksum you specified did not match what we received."


class InvalidDigest(S3Error):
    code, status = "InvalidDigest", 400
    default_message = "The Content-MD5 or checksum you specified is not valid."


class IncompleteBody(S3Error):
    code, status = "IncompleteBody", 400
    default_message = "You did not provide the number of bytes specified by the Content-Length HTTP header."


class MissingContentLength(S3Error):
    code, status = "MissingContentLength", 411
    default_message = "You must provide the Content-Length HTTP header."


class EntityTooLarge(S3Error):
    code, status = "EntityTooLarge", 400
    default_message = "Your proposed upload exceeds the maximum allowed object size."


class RequestTimeout(S3Error):
    code, status = "RequestTimeout", 400
    default_message = (
        "Your socket connection to the server was not read from or written to within the "
        "timeout period."
    )


# -- request shape ----------------------------------------------------------------------------
class InvalidArgument(S3Error):
    code, status, default_message = "InvalidArgument", 400, "Invalid Argument"


class InvalidRequest(S3Error):
    code, status, default_message = "InvalidRequest", 400, "Invalid Request"


class InvalidBucketName(S3Error):
    code, status, default_message = "InvalidBucketName", 400, "The specified bucket is not valid."


class KeyTooLongError(S3Error):
    code, status, default_message = "KeyTooLongError", 400, "Your key is too long."


class MalformedXML(S3Error):
    code, status = "MalformedXML", 400
    default_message = (
        "The XML you provided was not well-formed or did not validate against our published schema."
    )


class MethodNotAllowed(S3Error):
    code, status = "MethodNotAllowed", 405
    default_message = "The specified method is not allowed against this resource."


class NotImplementedError_(S3Error):
    code, status = "NotImplemented", 501
    default_message = "A header or operation you provided implies functionality that is not implemented."


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


class InvalidRange(S3Error):
    code, status, default_message = "InvalidRange", 416, "The requested range is not satisfiable"


class PreconditionFailed(S3Error):
    code, status = "PreconditionFailed", 412
    default_message = "At least one of the pre-conditions you specified did not hold"


class ConditionalRequestConflict(S3Error):
    """A conditional write lost a race: the key changed between the check and the commit."""

    code, status = "ConditionalRequestConflict", 409
    default_message = "A conflicting operation occurred. If using PutObject you can retry the request."


class InvalidPartNumber(S3Error):
    """GetObject/HeadObject ``partNumber`` beyond the object's parts."""

    code, status, default_message = "InvalidPartNumber", 416, "The requested partnumber is not satisfiable"


# -- resources --------------------------------------------------------------------------------
class NoSuchBucket(S3Error):
    code, status, default_message = "NoSuchBucket", 404, "The specified bucket does not exist"


class NoSuchKey(S3Error):
    code, status, default_message = "NoSuchKey", 404, "The specified key does not exist."


class NoSuchUpload(S3Error):
    code, status = "NoSuchUpload", 404
    default_message = (
        "The specified upload does not exist. The upload ID may be invalid, or the upload may "
        "have been aborted or completed."
    )


class BucketAlreadyExists(S3Error):
    code, status = "BucketAlreadyExists", 409
    default_message = "The requested bucket name is not available."


class BucketAlreadyOwnedByYou(S3Error):
    code, status = "BucketAlreadyOwnedByYou", 409
    default_message = (
        "Your previous request to create the named bucket succeeded and you already own it."
    )


class BucketNotEmpty(S3Error):
    code, status, default_message = "BucketNotEmpty", 409, "The bucket you tried to delete is not empty"


# -- multipart --------------------------------------------------------------------------------
class InvalidPart(S3Error):
    code, status = "InvalidPart", 400
    default_message = (
        "One or more of the specified parts could not be found. The part might not have been "
        "uploaded, or the specified entity tag might not have matched the part's entity tag."
    )


class InvalidPartOrder(S3Error):
    code, status = "InvalidPartOrder", 400
    default_message = "The list of parts was not in ascending order. Parts must be ordered by part number."


class EntityTooSmall(S3Error):
    code, status = "EntityTooSmall", 400
    default_message = "Your proposed upload is smaller than the minimum allowed object size."


# -- availability -----------------------------------------------------------------------------
class ServiceUnavailable(S3Error):
    code, status = "ServiceUnavailable", 503
    default_message = "Service is unable to handle request."


class SlowDown(S3Error):
    code, status, default_message = "SlowDown", 503, "Please reduce your request rate."


# -- browser POST uploads and request limits ---------------------------------------------------
class MalformedPOSTRequest(S3Error):
    code, status = "MalformedPOSTRequest", 400
    default_message = "The body of your POST request is not well-formed multipart/form-data."


class IncorrectNumberOfFilesInPostRequest(S3Error):
    code, status = "IncorrectNumberOfFilesInPostRequest", 400
    default_message = "POST requires exactly one file upload per request."


class InvalidPolicyDocument(S3Error):
    code, status = "InvalidPolicyDocument", 400
    default_message = "The content of the form does not meet the conditions specified in the policy document."


class InvalidChunkSizeError(S3Error):
    code, status = "InvalidChunkSizeError", 403
    default_message = "Only the last chunk is allowed to have a size less than 8192 bytes"


class RequestHeaderSectionTooLarge(S3Error):
    code, status = "RequestHeaderSectionTooLarge", 400
    default_message = "Your request header section exceeds the maximum allowed size."


class InvalidTag(S3Error):
    """A tag set S3 refuses: over 10 tags, a repeated key, a key or value too long or with
    a character outside the allowed set (object tagging)."""

    code, status, default_message = "InvalidTag", 400, "The TagKey you have provided is invalid"


def _leaves(cls: type[S3Error]) -> list[type[S3Error]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_leaves(sub))
    return out


_BY_CODE: dict[str, type[S3Error]] = {c.code: c for c in reversed(_leaves(S3Error))}


def from_code(
    code: str, message: str = "", *, resource: str = "", retry_after_s: int | None = None
) -> S3Error:
    """Rebuild an error received as ``(code, message)``, e.g. from a ``wire.Error`` reply.

    An unknown code becomes :class:`InternalError` carrying the original code in its message.
    """
    cls = _BY_CODE.get(code)
    if cls is None:
        return InternalError(f"{code}: {message}", resource=resource)
    return cls(message or None, resource=resource, retry_after_s=retry_after_s)
