"""The UI's HTTP shell: routes, sign-in, the CSRF check, time travel and the live stream.

Pages are GETs that render one view; actions are POSTs of plain HTML forms (usable
without JavaScript) that check the session's CSRF token, make one API call through the
handler layer and redirect back (303) — a refused call re-renders its page's error with
the API's own message and status. Nothing here decides anything the API would not.

The live stream (`/ui/stream`) is one server-sent-events connection per tab: each event
committed after the page's position is announced with its position as the SSE id, so a
reconnecting browser resumes with `Last-Event-ID` and misses nothing; a comment every
`KEEPALIVE` seconds keeps proxies from cutting it; the stream ends with the session (a
revoked token ends it at the next event or keep-alive, and a new connection gets 401).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import jinja2
import structlog
from aiohttp import web

from eventstore.errors import Unavailable
from schemas.convoy.v1 import api_pb2
from services.api import auth
from services.api.errors import Unauthenticated, classify, invalid
from services.api.handlers import Api
from services.api.methods import ROLE_LABELS
from services.api.ui import at, session
from services.api.ui.client import UiClient
from services.api.ui.views import application, approvals, common, fleet, history, preview, release, runtimes
from schemas.convoy.v1 import options_pb2

log = structlog.get_logger("convoy.ui")

HERE: Final = Path(__file__).parent
KEEPALIVE: Final = 15.0
NOTICES: Final = {
    "approved": "Approval recorded.",
    "rejected": "Rejection recorded.",
    "deployed": "Deploy recorded.",
    "signed-out": "Signed out.",
}
"""Fixed texts a redirect may ask for (never text from the URL)."""

View = Callable[..., Awaitable[common.Page]]
DECISIONS: Final[dict[str, tuple[str, Callable[..., Any], str, str]]] = {
    "approve": ("Approve", api_pb2.ApproveRequest, "comment", "approved"),
    "reject": ("Reject", api_pb2.RejectRequest, "reason", "rejected"),
}
"""The approval dialog's two buttons: method, request, where the reason goes, notice."""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["qs"] = lambda params: urlencode({k: v for k, v in params.items() if v not in ("", None)})
    return env


def _same_site_path(value: str | None, default: str = "/ui/fleet") -> str:
    """A redirect target only within this site (no scheme, no host, no //evil)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if len(value) > 2048 or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return default  # a header cannot carry it (and a URL this page made never has one)
    return value


class UiApp:
    """The UI's routes on the API's aiohttp application (`register`). `secure_cookies`
    marks cookies Secure (set it when the listener is reached over HTTPS)."""

    def __init__(self, api: Api, *, secure_cookies: bool = False, keepalive: float = KEEPALIVE) -> None:
        self._api = api
        self._secure = secure_cookies
        self._keepalive = keepalive
        self._env = _environment()
        self._stop = asyncio.Event()

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self._root)
        router.add_get("/ui", self._root)
        router.add_get("/ui/", self._root)
        router.add_get("/ui/login", self._login_form)
        router.add_post("/ui/login", self._login)
        router.add_post("/ui/logout", self._logout)
        router.add_get("/ui/fleet", self._page(fleet.load))
        router.add_get("/ui/approvals", self._page(approvals.load))
        router.add_get("/ui/history", self._page(history.load))
        router.add_get("/ui/runtimes", self._page(runtimes.load))
        router.add_get("/ui/events/{position:[0-9]{1,18}}", self._event)
        router.add_get("/ui/apps/{application}", self._page(application.load, "application"))
        router.add_get("/ui/apps/{application}/services/{service}", self._page(release.load, "application", "service"))
        router.add_get(
            "/ui/apps/{application}/services/{service}/deploy", self._page(preview.load, "application", "service")
        )
        router.add_post("/ui/actions/approve", self._approve)
        router.add_post("/ui/actions/deploy", self._deploy)
        router.add_get("/ui/stream", self._stream)
        router.add_static("/ui/static", HERE / "static", append_version=False)

    def close(self) -> None:
        """End every live stream now (the server is stopping)."""
        self._stop.set()

    # -- rendering -----------------------------------------------------------------

    def _render(self, request: web.Request, template: str, status: int = 200, **data: Any) -> web.Response:
        html = self._env.get_template(template).render(**data)
        return web.Response(
            text=html,
            status=status,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY",
                "Referrer-Policy": "same-origin",
                "Content-Security-Policy": (
                    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
                ),
            },
        )

    def _client(self, request: web.Request, as_of: api_pb2.AsOf | None = None) -> UiClient | None:
        secret = request.cookies.get(session.SESSION_COOKIE)
        if not secret:
            return None
        return UiClient(self._api, secret, as_of)

    def _frame(self, request: web.Request, client: UiClient, principal: auth.Principal, as_of: api_pb2.AsOf | None) -> dict[str, Any]:
        query = {k: v for k, v in request.rel_url.query.items() if k not in ("at", "notice")}
        return {
            "user": principal.name,
            "role": ROLE_LABELS.get(principal.role, "none"),
            "can_approve": principal.role >= options_pb2.ROLE_APPROVER,
            "can_deploy": principal.role >= options_pb2.ROLE_DEPLOYER,
            "csrf": session.csrf_token(client.secret),
            "path": request.rel_url.path,
            "here": str(request.rel_url.with_query({})) + (("?" + urlencode(query)) if query else ""),
            "query": query,
            "at": at.label(as_of),
            "past": as_of is not None,
            "head": self._api.position,
            "notice": NOTICES.get(request.rel_url.query.get("notice", ""), ""),
            "fragment": request.headers.get("X-Convoy-Fragment") == "1",
        }

    async def _show(self, request: web.Request, view: View, *args: Any) -> web.StreamResponse:
        client = self._client(request)
        if client is None:
            return self._to_login(request)
        try:
            principal = await client.principal()
            client.as_of = at.parse(request.rel_url.query.get("at"))
            page = await view(client, request.rel_url.query, *args)
            position = await self._api.position_of(client.as_of) if client.as_of is not None else page.position
        except Exception as error:  # refused: the API's own message and status, on the page
            return await self._refused(request, client, error)
        frame = self._frame(request, client, principal, client.as_of)
        return self._render(request, page.template, **frame, title=page.title, position=position, **page.data)

    async def _refused(self, request: web.Request, client: UiClient, error: BaseException, **extra: Any) -> web.Response:
        failure = self._api.fail(None, client.ctx(), error)
        try:
            principal = await client.principal()
        except Exception:  # the session ended (revoked, expired): sign in again
            return self._to_login(request, expired=True)
        frame = self._frame(request, client, principal, None)
        return self._render(
            request, "error.html", failure.http_status, **frame, title="Refused", failure=failure,
            position=self._api.position, **extra,
        )

    def _page(self, view: View, *names: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._show(request, view, *(request.match_info[n] for n in names))

        return handle

    async def _event(self, request: web.Request) -> web.StreamResponse:
        position = int(request.match_info["position"])
        if position <= 0:
            raise web.HTTPNotFound()
        return await self._show(request, lambda client, _query: history.event(client, position))

    # -- sign-in -------------------------------------------------------------------

    def _to_login(self, request: web.Request, *, expired: bool = False) -> web.Response:
        target = str(request.rel_url) if request.method == "GET" else "/ui/fleet"
        params = {"next": target}
        if expired:
            params["expired"] = "1"
        raise web.HTTPSeeOther("/ui/login?" + urlencode(params))

    async def _root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/ui/fleet")

    async def _login_form(self, request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
        nonce = session.login_nonce()
        response = self._render(
            request,
            "login.html",
            status,
            title="Sign in",
            nonce=nonce,
            next=_same_site_path(request.rel_url.query.get("next")),
            error=error,
            expired=request.rel_url.query.get("expired") == "1",
            notice=NOTICES.get(request.rel_url.query.get("notice", ""), ""),
        )
        response.set_cookie(session.LOGIN_COOKIE, nonce, max_age=3600, **session.cookie_attributes(secure=self._secure))  # type: ignore[arg-type]
        return response

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not session.nonce_ok(request.cookies.get(session.LOGIN_COOKIE), _text(form.get("nonce"))):
            return self._forbidden(request, "the sign-in form expired or came from another site; sign in again")
        secret = (_text(form.get("token")) or "").strip()
        client = UiClient(self._api, secret)
        try:
            principal = await client.principal()
        except Unavailable as error:
            return await self._login_form(request, error=str(error), status=503)
        except Exception:
            log.info("ui sign-in refused")
            return await self._login_form(request, error="That token is not valid (or was revoked, or has expired).", status=401)
        if len(secret) > session.MAX_COOKIE_SECRET:
            return await self._login_form(
                request, error="That SSO token is too large to keep in a session cookie (over 3,800 bytes): "
                "ask the identity provider for a token with fewer claims.", status=400,
            )
        log.info("ui signed in", token_id=principal.token_id)
        response = web.HTTPSeeOther(_same_site_path(_text(form.get("next"))))
        response.set_cookie(session.SESSION_COOKIE, secret, **session.cookie_attributes(secure=self._secure))  # type: ignore[arg-type]
        response.del_cookie(session.LOGIN_COOKIE, path="/")
        raise response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        secret = request.cookies.get(session.SESSION_COOKIE)
        if not session.csrf_ok(secret, _text(form.get(session.CSRF_FIELD))):
            return self._forbidden(request, "this sign-out did not come from a Convoy page")
        response = web.HTTPSeeOther("/ui/login?notice=signed-out")
        response.del_cookie(session.SESSION_COOKIE, path="/")
        raise response

    def _forbidden(self, request: web.Request, why: str) -> web.Response:
        log.warning("ui form refused", path=request.rel_url.path, reason=why)
        return self._render(request, "forbidden.html", 403, title="Refused", why=why)

    # -- actions -------------------------------------------------------------------

    async def _action(
        self, request: web.Request, act: Callable[[UiClient, Mapping[str, str]], Awaitable[str]]
    ) -> web.StreamResponse:
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        client = self._client(request)
        if client is None or not session.csrf_ok(client.secret, fields.get(session.CSRF_FIELD)):
            return self._forbidden(request, "this form did not come from a Convoy page signed in as you (CSRF check)")
        back = _same_site_path(fields.get("next"))
        try:
            await client.principal()
            notice = await act(client, fields)
        except Exception as error:
            return await self._refused(request, client, error, back=back)
        separator = "&" if "?" in back else "?"
        raise web.HTTPSeeOther(f"{back}{separator}notice={notice}")

    async def _approve(self, request: web.Request) -> web.StreamResponse:
        async def act(client: UiClient, f: Mapping[str, str]) -> str:
            decision = f.get("decision", "")
            if decision not in DECISIONS:
                raise invalid("decision", "approve or reject")
            method, message, reason_field, notice = DECISIONS[decision]
            where = {k: f.get(k, "") for k in ("application", "service", "channel", "release_id", "approval")}
            await client.write(
                method, message(**where, **{reason_field: f.get("reason", "")}),
                idempotency_key=f.get("idempotency_key") or None,
            )
            return notice

        return await self._action(request, act)

    async def _deploy(self, request: web.Request) -> web.StreamResponse:
        async def act(client: UiClient, f: Mapping[str, str]) -> str:
            await client.write(
                "Deploy",
                api_pb2.DeployRequest(
                    application=f.get("application", ""), service=f.get("service", ""),
                    version=f.get("version", ""), image=f.get("image", ""),
                    parameters=preview.parameters(f.get("params", "")),
                ),
                idempotency_key=f.get("idempotency_key") or None,
            )
            return "deployed"

        return await self._action(request, act)

    # -- live ----------------------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        client = self._client(request)
        if client is None:
            return web.json_response({"error": "signed out"}, status=401)
        try:
            await client.principal()
        except Exception as error:
            status = classify(error).http_status
            return web.json_response({"error": "signed out" if status == 401 else str(error)}, status=status)
        if "probe" in request.rel_url.query or request.method == "HEAD":
            return web.Response(status=204)  # the session is good: the browser may reconnect
        raw = request.headers.get("Last-Event-ID") or request.rel_url.query.get("after") or ""
        if raw and not (raw.isdigit() and int(raw) < 2**63):
            return web.json_response({"error": "Last-Event-ID / after: a log position"}, status=400)
        after = int(raw) if raw else self._api.position
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        events = client.watch(api_pb2.WatchRequest(after_position=after)).__aiter__()
        pending: asyncio.Task[Any] | None = None
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                if pending is None:
                    pending = asyncio.ensure_future(events.__anext__())
                done, _ = await asyncio.wait({pending, stopping}, timeout=self._keepalive, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    break
                if pending not in done:
                    await client.principal()  # a revoked session ends its stream
                    await response.write(b": keep-alive\n\n")
                    continue
                task, pending = pending, None
                event = task.result()
                data = json.dumps({"type": event.type.rsplit(".", 1)[-1], "stream": event.stream_id})
                await response.write(f"id: {event.position}\nevent: convoy\ndata: {data}\n\n".encode())
        except (StopAsyncIteration, ConnectionResetError, Unauthenticated):
            pass
        except Exception as error:  # the stream ends; the browser reconnects from its last id
            log.info("ui stream ended", error=str(error)[:200])
        finally:
            stopping.cancel()
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            with contextlib.suppress(BaseException):
                await events.aclose()  # type: ignore[attr-defined]
        return response


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None

