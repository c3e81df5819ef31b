"""Anthropic's Messages API (``/v1/messages``) over the scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from cairn.server.api import Api


def routes(api: Api) -> list[web.AbstractRouteDef]:
    return []
