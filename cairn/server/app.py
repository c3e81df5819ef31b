"""``cairn serve``'s application: the routes of every API, the middlewares, the settings."""

from __future__ import annotations

import math
import os

from aiohttp import web

from cairn.manifests.models import Models
from cairn.server.api import Api, Settings
from cairn.server.fields import MAX_BODY, BadRequest, api_errors, duration


def make_app(settings: Settings) -> web.Application:
    from cairn.server import anthropic, embed, guard, manage, openai, responses

    api = Api(settings)
    app = web.Application(
        middlewares=[*guard.middlewares(api), api_errors], client_max_size=MAX_BODY
    )
    app["api"] = api
    for module in (anthropic, embed, manage, openai, responses):
        app.add_routes(module.routes(api))
    guard.setup(app, api)
    app.add_routes(
        [
            web.get("/", api.root),
            web.get("/api/version", api.version),
            web.get("/api/tags", api.tags),
            web.post("/api/show", api.show),
            web.get("/api/ps", api.ps),
            web.post("/api/copy", api.copy),
            web.delete("/api/delete", api.delete),
            web.post("/api/generate", api.generate),
            web.post("/api/chat", api.chat),
        ]
    )

    async def halt(_: web.Application) -> None:
        """Going down: answers in progress stop now (their runners are killed), rather
        than the server waiting for them to finish."""
        for loaded in api.scheduler.loaded():
            await api.loader.kill(loaded)

    async def close(_: web.Application) -> None:
        await api.scheduler.close()

    app.on_shutdown.append(halt)
    app.on_cleanup.append(close)
    return app


def settings_from_environment(models: Models) -> Settings:
    def number(name: str, default: float) -> float:
        text = os.environ.get(name)
        if not text:
            return default
        try:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
        except ValueError:
            from cairn.errors import ConfigError

            raise ConfigError("{name}={value!r} is not a number", name=name, value=text) from None

    def listed(name: str) -> tuple[str, ...]:
        """A comma-separated setting, blanks dropped."""
        return tuple(v.strip() for v in os.environ.get(name, "").split(",") if v.strip())

    keep = os.environ.get("CAIRN_KEEP_ALIVE")
    try:
        keep_alive = duration(keep, 300.0)
    except BadRequest:
        from cairn.errors import ConfigError

        raise ConfigError("CAIRN_KEEP_ALIVE={value!r} is not a duration", value=keep) from None
    return Settings(
        models,
        keep_alive=keep_alive,
        max_loaded=int(number("CAIRN_MAX_LOADED_MODELS", 3)),
        num_parallel=int(number("CAIRN_NUM_PARALLEL", 1)),
        max_queue=int(number("CAIRN_MAX_QUEUE", 512)),
        api_keys=listed("CAIRN_API_KEYS"),
        origins=listed("CAIRN_ORIGINS"),
    )
