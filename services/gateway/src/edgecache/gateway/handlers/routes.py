"""The gateway's route table, and what every S3 handler shares.

Every handler has the shape ``async (x: Exchange) -> Response`` and raises
:class:`~edgecache.common.errors.S3Error` for anything the client should see as an S3
error. Each is registered with :func:`serves` under the S3 action it serves and the
``s3.*`` request it sends (:data:`ROUTES`); an action that sends one request is named
after that request type of ``wire`` (the operation table). The actions nobody serves
(501 NotImplemented, 405 MethodNotAllowed) are answered here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from litestar import Response

from edgecache.common import errors, names, wire
from edgecache.gateway.headers import (
    parse_decimal,
)

if TYPE_CHECKING:
    from edgecache.gateway.exchange import Exchange
    from edgecache.gateway.operations import Operation

__all__ = [
    "Handler",
    "MAX_SMALL_XML_BYTES",
    "MAX_XML_BYTES",
    "ROUTES",
    "Route",
    "check_key",
    "expect_reply",
    "int_param",
    "method_not_allowed",
    "not_implemented",
    "operation_of",
    "serves",
    "upload_id_of",
]


Handler = Callable[["Exchange"], Awaitable[Response[Any]]]
R = TypeVar("R")


MAX_XML_BYTES = 4 * 1024 * 1024  # CompleteMultipartUpload with 10000 parts is ~1.5 MB
MAX_SMALL_XML_BYTES = 64 * 1024
_MAX_INT = 2147483647  # S3's largest integer query parameter


@dataclass(frozen=True, slots=True)
class Route:
    """How the gateway serves one S3 action.

    Attributes:
        action: the S3 action, as :func:`~edgecache.gateway.operations.route` names it.
        handler: the coroutine that serves it.
        request: the ``s3.*`` request type it sends to the cache nodes (``None``: it
            answers with an error itself).
    """

    action: str
    handler: Handler
    request: type[wire.Request] | None


#: The gateway's half of the operation table: every S3 action, filled by :func:`serves`.
ROUTES: dict[str, Route] = {}


def serves(
    request: type[wire.Request] | None, *, action: str | None = None
) -> Callable[[Handler], Handler]:
    """Register the decorated handler as the gateway's route for ``action``, which sends
    ``request``. ``action`` defaults to the request type's name: the operation table
    (``wire.Request``) names each request type after its S3 action."""

    def register(handler: Handler) -> Handler:
        name = action or (request.__name__ if request is not None else "")
        if not name or name in ROUTES:
            raise ValueError(f"no action, or a second route for {name!r}")
        ROUTES[name] = Route(action=name, handler=handler, request=request)
        return handler

    return register


def expect_reply(reply: wire.Reply, type_: type[R]) -> R:
    if not isinstance(reply, type_):
        raise errors.InternalError(f"expected {type_.__name__}, got {type(reply).__name__}")
    return reply


def operation_of(x: Exchange) -> Operation:
    assert x.op is not None
    return x.op


def int_param(
    query: dict[str, str], name: str, default: int, *, low: int, high: int | None = None
) -> int:
    """A numeric query parameter, clamped to ``high``.

    Raises:
        InvalidArgument: not a decimal integer, below ``low`` or above 2147483647.
    """
    value = query.get(name)
    if value is None or value == "":
        return default
    number = parse_decimal(value, max_digits=10)
    if number is None or not low <= number <= _MAX_INT:
        raise errors.InvalidArgument(
            f"Argument {name} must be an integer between {low} and {_MAX_INT}"
        )
    return min(number, high) if high is not None else number


def check_key(op: Operation) -> None:
    names.validate_key(op.bucket, op.key)


def upload_id_of(op: Operation) -> str:
    upload_id = op.query.get("uploadId", "")
    if not upload_id:
        raise errors.NoSuchUpload(resource=op.resource)
    return upload_id


@serves(None, action="NotImplemented")
async def not_implemented(x: Exchange) -> Response[Any]:
    """Any operation or sub-resource we do not serve → 501 NotImplemented."""
    detail = operation_of(x).detail
    raise errors.NotImplementedError_(
        f"{errors.NotImplementedError_.default_message} ({detail})" if detail else None
    )


@serves(None, action="MethodNotAllowed")
async def method_not_allowed(x: Exchange) -> Response[Any]:
    """A method the target does not support → 405 MethodNotAllowed."""
    raise errors.MethodNotAllowed(resource=operation_of(x).resource)
