"""The error codes of the OCI Distribution spec, and their HTTP statuses."""

from __future__ import annotations

import json

from aiohttp import web

STATUS = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "RANGE_INVALID": 416,
}


class OCIError(Exception):
    """Raised by a handler; the middleware turns it into the spec's JSON error body."""

    def __init__(
        self,
        code: str,
        message: str,
        detail: object = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail
        self.status = status or STATUS[code]
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"errors": [{"code": self.code, "message": self.message, "detail": self.detail}]}
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers=self.headers,
        )
