"""uvicorn's httptools protocol with a bound on the request head.

httptools (llhttp) has no limit of its own on the request line or headers:
it hands uvicorn the URL in pieces and keeps a header value growing until it
ends, so a client sending `X-Pad: ` and then megabytes grows the server
without bound, before any route or token check. h11 stops at 16 KiB; this
stops at MAX_HEAD_BYTES: past it, 431 and the connection is closed.

The bytes of a head are counted as they arrive, from the end of the previous
request (or the connection's start) to the end of the headers. A read in
which the headers end is not counted (its tail is body, or the next request
of a pipeline), so a head is refused at most one read past the limit.
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
"""Request line and headers of one request at most, in bytes (docs/api.md)."""

_BODY = orjson.dumps(
    {
        "detail": [
            {
                "loc": ["header"],
                "msg": f"the request line and headers exceed {MAX_HEAD_BYTES} bytes",
                "type": "header_too_large",
            }
        ]
    }
)
_REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode("ascii") + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that answers 431 and closes past MAX_HEAD_BYTES of head."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._head_ended = False

    def data_received(self, data: bytes) -> None:
        self._head_ended = False
        super().data_received(data)
        if not self._in_head or self._head_ended or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self.transport.write(_REFUSAL)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_ended = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._head_ended = True  # what follows in this read is the next head's start
        super().on_message_complete()
