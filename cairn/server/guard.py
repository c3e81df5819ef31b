"""What stands before the API: keys, CORS, body limits, and ``/metrics``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from cairn.server.api import Api


def middlewares(api: Api) -> list[Any]:
    return []


def setup(app: web.Application, api: Api) -> None:
    """Routes and hooks of its own (``/metrics``)."""
