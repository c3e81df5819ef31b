"""``cairn registry serve``: an OCI Distribution registry over the local store.

Repositories map onto the store's ``<host>/<namespace>/<name>``: a name
whose first component is a host the store holds maps there (the rest is
``ns/name``, or a deeper OCI path ``org/team/name``); ``ns/name`` maps to
``--default-host``. Blobs are the store's blobs (one pool for all
repositories); manifests are tags in Ollama's layout, and a manifest pushed
by digest alone is kept beside the tags, in the repository's ``.by-digest``
folder, never as a tag. A manifest fetched by digest always hashes to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

from aiohttp import web

from cairn.errors import (
    StorageFullError,
    StoreBusyError,
    UploadClosedError,
)
from cairn.manifests.manifest import MAX_MANIFEST_SIZE
from cairn.registry.server.blobs import (
    NO_SESSION,
    cancel_upload,
    delete_blob,
    get_blob,
    patch_upload,
    put_upload,
    start_upload,
    upload_status,
)
from cairn.registry.server.catalog import catalog
from cairn.registry.server.errors import OCIError
from cairn.registry.server.manifests import (
    delete_manifest,
    get_manifest,
    list_tags,
    put_manifest,
    referrers,
)
from cairn.registry.server.registry import (
    API_VERSION,
    BLOB,
    TOKEN,
    UPLOAD_STATUS,
    Handler,
    Options,
    Registry,
    absolute_url,
    load_htpasswd,
    log,
)
from cairn.registry.server.tokens import TOKEN_LIFE

__all__ = ["Options", "load_htpasswd", "make_app"]

_HOST = re.compile(r"([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


async def base(request: web.Request) -> web.StreamResponse:
    return web.json_response({}, headers=API_VERSION)


async def token(request: web.Request) -> web.StreamResponse:
    """A bearer token for Basic credentials an htpasswd entry takes (the token flow of
    docker, skopeo and cairn), or for a request an Ollama key listed in --ollama-keys
    signed (Ollama's flow: ``tokens``)."""
    registry: Registry = request.app["registry"]
    header = request.headers.get("Authorization", "")
    if header.startswith("Basic "):
        ok = await registry.basic(header)
    else:
        url = absolute_url(request, request.raw_path)
        query = request.query
        signer = registry.tokens.ollama_key(
            header, url, query.get("ts", ""), query.get("nonce", "")
        )
        ok = signer is not None
    if not ok:
        raise OCIError(
            "UNAUTHORIZED",
            "a token needs htpasswd credentials or a request signed by a listed Ollama key",
            headers={"WWW-Authenticate": 'Basic realm="cairn"'},
        )
    issued = registry.tokens.issue()
    return web.json_response(
        {
            "token": issued,
            "access_token": issued,
            "expires_in": int(TOKEN_LIFE),
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    started = time.monotonic()
    status = 500
    try:
        if not _HOST.fullmatch(request.host):  # it is echoed in Location and the challenge
            raise OCIError("UNSUPPORTED", "the Host header is not a host[:port]", status=400)
        token_route = request.match_info.route.name == TOKEN
        if not token_route and not await registry.authorized(request):
            raise OCIError(
                "UNAUTHORIZED",
                "authentication required",
                headers={"WWW-Authenticate": registry.challenge(request), **API_VERSION},
            )
        if registry.options.read_only and request.method not in ("GET", "HEAD"):
            raise OCIError("UNSUPPORTED", "this registry is read-only")
        if registry.options.upstreams and request.method not in ("GET", "HEAD"):
            raise OCIError(
                "UNSUPPORTED", "this registry is a pull-through cache: push to its upstream"
            )
        response = await handler(request)
        status = response.status
        return response
    except OCIError as exc:
        status = exc.status
        return exc.response()
    except (ConnectionResetError, asyncio.IncompleteReadError):
        status = 400  # the client went away mid-body: nobody reads an answer, log it
        return OCIError("BLOB_UPLOAD_INVALID", "the client went away mid-body").response()
    except UploadClosedError:
        status = 404
        return OCIError("BLOB_UPLOAD_UNKNOWN", NO_SESSION).response()
    except StoreBusyError as exc:  # a collection elsewhere held the store too long
        status = 503
        return OCIError(
            "TOOMANYREQUESTS", str(exc), status=503, headers={"Retry-After": "60"}
        ).response()
    except StorageFullError as exc:
        status = 507
        return OCIError("BLOB_UPLOAD_INVALID", str(exc), status=507).response()
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        _access(registry, request, status, time.monotonic() - started)


def _access(registry: Registry, request: web.Request, status: int, seconds: float) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    peer = request.remote or "-"
    if registry.options.json_logs:
        log.info(
            json.dumps(
                {
                    "remote": peer,
                    "method": request.method,
                    "path": request.path,
                    "status": status,
                    "seconds": round(seconds, 6),
                }
            )
        )
    else:
        log.info('%s "%s %s" %d %.3fs', peer, request.method, request.path, status, seconds)


def make_app(options: Options) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_MANIFEST_SIZE + 1)
    registry = Registry(options)
    app["registry"] = registry
    if options.upstreams:
        from cairn.registry.server.upstream import Cache, parse_upstream

        upstreams = tuple(parse_upstream(url) for url in options.upstreams)
        registry.cache = Cache(registry, upstreams, options.upstream_ttl, options.upstream_timeout)
    name = r"{name:[A-Za-z0-9._/-]+?}"
    routes = [
        web.get("/v2/", base),
        web.get("/v2/_catalog", catalog),
        web.get("/token", token, name=TOKEN),
        web.get(f"/v2/{name}/manifests/{{reference}}", get_manifest),
        web.put(f"/v2/{name}/manifests/{{reference}}", put_manifest),
        web.delete(f"/v2/{name}/manifests/{{reference}}", delete_manifest),
        web.post(f"/v2/{name}/blobs/uploads/", start_upload),
        web.patch(f"/v2/{name}/blobs/uploads/{{uuid}}", patch_upload),
        web.put(f"/v2/{name}/blobs/uploads/{{uuid}}", put_upload),
        web.get(f"/v2/{name}/blobs/uploads/{{uuid}}", upload_status, name=UPLOAD_STATUS),
        web.delete(f"/v2/{name}/blobs/uploads/{{uuid}}", cancel_upload),
        web.get(f"/v2/{name}/blobs/{{digest}}", get_blob, name=BLOB),
        web.delete(f"/v2/{name}/blobs/{{digest}}", delete_blob),
        web.get(f"/v2/{name}/tags/list", list_tags),
        web.get(f"/v2/{name}/referrers/{{digest}}", referrers),
    ]
    app.add_routes(routes)

    async def expire_uploads(_: web.Application) -> None:
        """Idle sessions go on a timer, not only when a new upload starts."""

        async def every() -> None:
            period = max(0.5, min(60.0, options.upload_expiry / 4))
            while True:
                await asyncio.sleep(period)
                registry.uploads.expire()

        app["expirer"] = asyncio.get_running_loop().create_task(every())

    async def stop_expiring(_: web.Application) -> None:
        app["expirer"].cancel()

    app.on_startup.append(expire_uploads)
    app.on_cleanup.append(stop_expiring)

    async def cleanup(_: web.Application) -> None:
        if registry.cache is not None:
            await registry.cache.close()
        registry.close()

    app.on_cleanup.append(cleanup)
    return app
