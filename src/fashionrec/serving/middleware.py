"""The guard in front of every request (pure ASGI): security headers, write authorisation and body limits.

Hostile-input rules, in one place (with serving.uploads for what an upload may be):
Hostile-input rules, in one place:
- every response carries nosniff, X-Frame-Options DENY, Referrer-Policy no-referrer and a Content-Security-Policy
  (the page's allows only its own script, style and images; API answers allow nothing);
- request bodies are capped before they are read: by Content-Length at once, and while streaming (chunked); a
  body must arrive within `body_timeout` seconds (default 30) of the request, else 408 and the connection is
  closed; each client (by address) has at most `max_uploads_per_client` uploads in flight (default 4), more: 429;
- writes (POST /items, DELETE /items/{id}) need `Authorization: Bearer <token>` and a token configured with
  `fashionrec serve --write-token` / FASHIONREC_WRITE_TOKEN; checked before the body is read;
- image decoding and embedding run in worker threads (never on the event loop), pixel counts are capped from the
  header before any pixel is decoded, and at most two uploads are decoded at once;
- GET /images/{id} serves only files inside the data folder (or the arrivals folder) that open as images, with
  the content type of the format actually found.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi import HTTPException

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and form fields around the file
MAX_JSON_BYTES = 1024 * 1024  # POST /recommendations: 500 ids fit in 40 KB
DEFAULT_BODY_TIMEOUT = 30.0  # seconds to receive a whole request body
DEFAULT_UPLOADS_PER_CLIENT = 4  # uploads (POST /items, /search/image) one client address may have in flight

CSP_PAGE = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
CSP_API = "default-src 'none'; frame-ancestors 'none'; sandbox"
# Swagger UI and ReDoc load their script and style from a CDN and start with an inline script.
CSP_DOCS = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; connect-src 'self'; worker-src blob:; frame-ancestors 'none'"
)
_CSP_PAGE, _CSP_API, _CSP_DOCS = CSP_PAGE.encode(), CSP_API.encode(), CSP_DOCS.encode()
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class _BodyTooLarge(HTTPException):
    pass


class _BodyTimeout(HTTPException):
    pass


# ---------------------------------------------------------------------------------------------- middleware
def write_denied(authorization: bytes | None, token: bytes | None) -> tuple[int, str] | None:
    """(status, reason) when a write must be refused, else None. 403: writes disabled or wrong token;
    401: no or malformed `Authorization: Bearer` header (a token is configured, so credentials could help)."""
    if not token:
        return 403, (
            "writes are disabled on this server: start it with --write-token TOKEN (or the environment "
            "variable FASHIONREC_WRITE_TOKEN) and send 'Authorization: Bearer TOKEN'"
        )
    if not authorization:
        return 401, "this request changes the catalog: send 'Authorization: Bearer <write token>'"
    scheme, _, cred = authorization.partition(b" ")
    cred = cred.strip()
    if scheme.lower() != b"bearer" or not cred:
        return 401, "malformed Authorization header: expected 'Bearer <write token>'"
    if not hmac.compare_digest(cred, token):
        return 403, "wrong write token"
    return None


def _is_write(method: str, path: str) -> bool:
    return (method == "POST" and path.rstrip("/") == "/items") or (method == "DELETE" and path.startswith("/items/"))


class GuardMiddleware:
    """Pure ASGI (no per-request task or body copy): security headers on every response; writes authorised and
    bodies capped before the application reads a byte of them."""

    def __init__(
        self,
        app,
        write_token: str | None,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        max_uploads_per_client: int = DEFAULT_UPLOADS_PER_CLIENT,
    ):
        self.app = app
        self.token = write_token.encode() if write_token else None
        self.body_timeout = float(body_timeout)
        self.max_uploads = int(max_uploads_per_client)
        self.uploads: dict[str, int] = {}  # client address -> uploads in flight (the event loop is one thread)

    @staticmethod
    def _is_upload(method: str, path: str) -> bool:
        return method == "POST" and path.rstrip("/") in ("/items", "/search/image")

    @staticmethod
    def _csp(path: str) -> bytes:
        if path == "/" or path.startswith("/static/"):
            return _CSP_PAGE
        if path.startswith(("/docs", "/redoc")):
            return _CSP_DOCS
        return _CSP_API

    @staticmethod
    def _limit(path: str) -> int:
        if path.rstrip("/") in ("/items", "/search/image"):
            return MAX_UPLOAD_BYTES + MAX_MULTIPART_OVERHEAD
        return MAX_JSON_BYTES

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        csp = self._csp(path)
        started = False
        close = False  # the body was cut short (too slow, too large): the connection is closed after the answer

        async def send_secured(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                if close:  # else the server would keep reading the rest of the body as the next request's bytes
                    headers = [(k, v) for k, v in headers if k.lower() != b"connection"] + [(b"connection", b"close")]
                message = {**message, "headers": headers + SECURITY_HEADERS + [(b"content-security-policy", csp)]}
            await send(message)

        async def answer(status: int, detail: str, extra: list | None = None):
            import orjson

            body = orjson.dumps({"detail": detail})
            await send_secured(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *(extra or []),
                    ],
                }
            )
            await send_secured({"type": "http.response.body", "body": body})

        headers = dict(scope.get("headers") or [])
        if _is_write(method, path):
            denied = write_denied(headers.get(b"authorization"), self.token)
            if denied:
                extra = [(b"www-authenticate", b'Bearer realm="fashionrec writes"')] if denied[0] == 401 else []
                return await answer(*denied, extra=extra)
        if method in ("POST", "PUT", "PATCH"):
            limit = self._limit(path)
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return await answer(
                    413,
                    f"request body is {int(declared):,} bytes; the limit here is {limit:,} "
                    f"(uploads: {MAX_UPLOAD_BYTES:,} bytes per image)",
                )
            client = (scope.get("client") or ("?", 0))[0]
            upload = self._is_upload(method, path)
            if upload and self.uploads.get(client, 0) >= self.max_uploads:
                return await answer(
                    429,
                    f"{self.max_uploads} uploads from this client are in progress; send the next when one is done",
                    extra=[(b"retry-after", b"1")],
                )
            received = 0
            deadline = time.monotonic() + self.body_timeout
            body_done = False

            async def capped_receive():
                nonlocal received, body_done, close
                if body_done:  # after the body: disconnect notices are not timed
                    return await receive()
                left = deadline - time.monotonic()
                try:
                    message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
                except TimeoutError:
                    close = True
                    raise _BodyTimeout(
                        408, f"the request body did not arrive within {self.body_timeout:g} seconds"
                    ) from None
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:  # a chunked body (no Content-Length) that keeps coming
                        close = True
                        raise _BodyTooLarge(
                            413,
                            f"request body is over the {limit:,}-byte limit "
                            f"(uploads: {MAX_UPLOAD_BYTES:,} bytes per image)",
                        )
                    body_done = not message.get("more_body", False)
                return message

            if upload:
                self.uploads[client] = self.uploads.get(client, 0) + 1
            try:
                return await self.app(scope, capped_receive, send_secured)
            except (_BodyTooLarge, _BodyTimeout) as e:
                if not started:  # answered, and the connection closed: the rest of the body is never read
                    return await answer(e.status_code, e.detail)
                raise
            finally:
                if upload:
                    n = self.uploads.get(client, 1) - 1
                    if n > 0:
                        self.uploads[client] = n
                    else:
                        self.uploads.pop(client, None)
        return await self.app(scope, receive, send_secured)
