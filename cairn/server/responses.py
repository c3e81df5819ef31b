"""OpenAI's Responses API (``/v1/responses``), stateless as Ollama offers it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from cairn.server.api import Api


def routes(api: Api) -> list[web.AbstractRouteDef]:
    return []
