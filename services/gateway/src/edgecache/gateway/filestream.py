"""A streamed answer whose pieces are bytes or spans of files on this host.

A cold GET on a cache node's host follows the fill in the chunk's file
(:mod:`.shortcircuit`). With :class:`FileStream` those spans reach the client by ASGI's
zero-copy send (:mod:`.zerocopy`): the body iterator yields a :class:`FilePiece` for a
span, and the response sends it as an ``http.response.zerocopysend`` message instead of
reading it into Python. Only offer file pieces where the server offered the extension
(``ZEROCOPY_SEND in scope["extensions"]``). A piece that cannot be sent whole (the file
unreadable or shorter than the piece) cuts the connection (:class:`.StreamCut`): some of
the body may already be out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar.response.streaming import ASGIStreamingResponse, Stream

from edgecache.gateway.responses import StreamCut
from edgecache.gateway.zerocopy import ZEROCOPY_SEND, FilePiece

if TYPE_CHECKING:
    from litestar.response.base import ASGIResponse
    from litestar.types import Send

__all__ = ["FilePiece", "FileStream"]  # FilePiece: zerocopy's, named here too


class FileStream(Stream):
    """Litestar's :class:`~litestar.response.Stream` whose iterator may also yield
    :class:`FilePiece` s, sent as ``http.response.zerocopysend`` messages."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        response.__class__ = _ASGIFileStream  # the same object, with the sending below
        return response


class _ASGIFileStream(ASGIStreamingResponse):
    __slots__ = ()

    async def _stream(self, send: Send) -> None:
        async for piece in self.iterator:
            if isinstance(piece, FilePiece):
                message: Any = {
                    "type": ZEROCOPY_SEND,
                    "file": piece.fd,
                    "offset": piece.offset,
                    "count": piece.count,
                    "more_body": True,
                }
            else:
                body = piece if isinstance(piece, bytes) else piece.encode(self.encoding)
                message = {"type": "http.response.body", "body": body, "more_body": True}
            try:
                await send(message)
            except (OSError, RuntimeError) as exc:  # the file could not be sent whole
                if isinstance(piece, FilePiece):
                    raise StreamCut(f"{piece!r}: {exc}") from exc
                raise
        await send({"type": "http.response.body", "body": b"", "more_body": False})
