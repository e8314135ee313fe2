"""The clouds' edge proxies for sandbox ports, emulated for every emulator alike.

E2B, Daytona and Vercel each give a sandbox port a host name of its own (`3000-<sandbox>.<domain>`) served by
their edge, which routes by the Host header. An emulator wraps its ASGI app with `preview_proxy` and says, per
request, whether the Host names one of its sandbox ports (`route`): such requests are forwarded to that port
on loopback (the emulators' sandboxes use host networking, so a sandbox's port is the same loopback port),
everything else goes to the emulator's API. TLS is not emulated: tests reach the proxy over plain HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
#: (host without port, lower-cased request headers) -> the loopback port to forward to, an answer of the
#: edge's own (no such sandbox, no token), or None when the host is not a preview host.
Route = Callable[[str, dict[str, str]], "int | Response | None"]

# Hop-by-hop headers, and those httpx has already acted on (it decodes the body).
_DROPPED = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def preview_host(port: int, sandbox_id: str, domain: str) -> str:
    return f"{port}-{sandbox_id}.{domain}"


def parse_preview_host(host: str, domain: str) -> tuple[int, str] | None:
    """(port, sandbox id) of a host made by preview_host, or None."""
    match = re.fullmatch(rf"(\d{{1,5}})-([A-Za-z0-9_-]+)\.{re.escape(domain)}", host)
    return (int(match[1]), match[2]) if match else None


def edge_error(status: int, message: str) -> Response:
    return JSONResponse({"message": message, "code": status}, status_code=status)


def preview_proxy(app: ASGIApp, route: Route) -> ASGIApp:
    async def proxied(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        target = route(headers.get("host", "").rsplit(":", 1)[0].lower(), headers)
        if target is None:
            await app(scope, receive, send)
            return
        if isinstance(target, Response):
            await target(scope, receive, send)
            return
        request = Request(scope, receive)
        url = f"http://127.0.0.1:{target}{scope['path']}"
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.request(
                    request.method,
                    url,
                    headers={k: v for k, v in headers.items() if k not in _DROPPED},
                    content=await request.body(),
                )
        except httpx.TransportError:
            # What the clouds answer when nothing listens on the port yet.
            await edge_error(502, f"nothing listens on port {target} in the sandbox")(scope, receive, send)
            return
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _DROPPED}
        await Response(answer.content, status_code=answer.status_code, headers=kept)(scope, receive, send)

    return proxied
