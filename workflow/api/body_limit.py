"""Request bodies over 1 MiB are refused (413) before they are read into memory."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workflow.adapters import metrics as prometheus
from workflow.api.problems import PAYLOAD_TOO_LARGE, ApiProblem, problem

MAX_BODY_BYTES = 1024 * 1024  # a case's largest payload (a household, a plan) is a few kB


class BodyTooLarge(ApiProblem):
    def __init__(self, limit: int) -> None:
        super().__init__(PAYLOAD_TOO_LARGE, f"the request body is larger than {limit} bytes")


class BodyLimitMiddleware:
    """Pure ASGI. A declared Content-Length over the limit is answered at once, before any route
    runs; a body sent without one (chunked) is cut off as soon as it passes the limit: the read
    raises ``BodyTooLarge``, which the app's handlers answer like any other refusal."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        # Compared by length first: int() refuses strings of more than 4300 digits.
        if declared.isdigit() and (len(declared) > 18 or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:  # read after the answer began: nothing left to say
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        prometheus.refused(PAYLOAD_TOO_LARGE)
        response = problem(
            PAYLOAD_TOO_LARGE,
            f"the request body is larger than {self.max_bytes} bytes",
            scope.get("path"),
            scope.get("state", {}).get("request_id"),
            headers={"Connection": "close"},  # the rest of the body is not read
        )
        await response(scope, receive, send)
