# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The operator console's web server: HTTP routes, request checks and JSON errors.

Why apart from the node: the routes, the limits and the error rules can be read and
tested without ROS; the node (``nodes/label_console_node.py``) supplies a ``Backend``
that talks to the learner and the camera. Why aiohttp: one small, well-kept asyncio
library serves the static page and the JSON API; it runs in its own thread and event
loop beside the rclpy executor, and every blocking backend call (a service round trip,
GrabCut) runs in a worker thread so one slow request never stalls the page.

Error contract (every ``/api`` answer is JSON): 400 malformed request (not JSON, not an
object), 401 missing or wrong access token, 404 unknown frame/proposal/route, 413 body
larger than ``max_request_bytes``, 422 well-formed but invalid or refused (the reason
says which), 503 the learner or camera is not there, 500 an unexpected failure (the
handler never lets an exception out: the console keeps serving).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
from pathlib import Path
import threading
from typing import Any, Callable, Protocol

from aiohttp import web

LOG = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / 'static'
#: Most prompt points one request may carry (a person clicks a handful).
MAX_POINTS = 64
MAX_CLASS_NAME = 64
LAYERS = ('image', 'overlay', 'margin')
TOKEN_HEADER = 'X-Console-Token'


class ConsoleError(Exception):
    """A request the console refuses; ``status`` is the HTTP status, the text the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Backend(Protocol):
    """What the web server needs from the node (all calls may block; run in threads)."""

    def snapshot(self) -> dict: ...  # noqa: D102
    def frame_jpeg(self, stamp_ns: int, layers: list[str]) -> bytes: ...  # noqa: D102
    def propose(self, stamp_ns: int, prompt: dict) -> dict: ...  # noqa: D102
    def proposal_png(self, proposal_id: str) -> bytes: ...  # noqa: D102
    def accept(self, proposal_id: str, class_name: str) -> dict: ...  # noqa: D102
    def classes(self) -> dict: ...  # noqa: D102
    def labels(self) -> dict: ...  # noqa: D102
    def thumbnail(self, frame_id: str) -> bytes: ...  # noqa: D102
    def remove_class(self, name: str) -> dict: ...  # noqa: D102
    def remove_frame(self, frame_id: str) -> dict: ...  # noqa: D102
    def versions(self) -> dict: ...  # noqa: D102
    def rollback(self, version_id: str) -> dict: ...  # noqa: D102
    def learn(self, classes: list[str], iterations: int) -> dict: ...  # noqa: D102
    def cancel(self) -> dict: ...  # noqa: D102
    def job(self) -> dict: ...  # noqa: D102
    def suggestions(self) -> dict: ...  # noqa: D102


# -- request checks (pure functions: each raises ConsoleError(422) saying what is wrong) --
def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConsoleError(422, f'{what} must be a number, got {value!r}')
    if value != value or value in (float('inf'), float('-inf')):
        raise ConsoleError(422, f'{what} must be finite, got {value!r}')
    return float(value)


def parse_points(value: Any, what: str) -> list[tuple[float, float]]:
    """Return ``[[x, y], ...]`` as float pairs; 422 for anything else or too many."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConsoleError(422, f'{what} must be a list of [x, y] pixel pairs')
    if len(value) > MAX_POINTS:
        raise ConsoleError(422, f'{what} has {len(value)} points; at most {MAX_POINTS}')
    points = []
    for k, item in enumerate(value):
        if not isinstance(item, list) or len(item) != 2:
            raise ConsoleError(422, f'{what}[{k}] must be [x, y], got {item!r}')
        points.append((_number(item[0], f'{what}[{k}][0]'),
                       _number(item[1], f'{what}[{k}][1]')))
    return points


def parse_prompt(body: dict) -> dict:
    """
    Return ``{'box': (x, y, w, h)}`` or ``{'fg': [...], 'bg': [...]}`` from a request body.

    Exactly one kind of prompt: a box, or foreground points (with optional background
    points). Sizes are checked against the frame by the backend, which knows it.
    """
    box = body.get('box')
    fg = parse_points(body.get('fg_points'), 'fg_points')
    bg = parse_points(body.get('bg_points'), 'bg_points')
    if box is not None and (fg or bg):
        raise ConsoleError(422, 'give a box or points, not both')
    if box is not None:
        if not isinstance(box, list) or len(box) != 4:
            raise ConsoleError(422, f'box must be [x, y, width, height], got {box!r}')
        x, y, w, h = (_number(v, f'box[{k}]') for k, v in enumerate(box))
        if w < 2 or h < 2:
            raise ConsoleError(422, f'box {w:g}x{h:g} is too small: drag at least 2x2 pixels')
        return {'box': (x, y, w, h)}
    if not fg:
        raise ConsoleError(422, 'no prompt: drag a box or click at least one point on the '
                                'object (fg_points)')
    return {'fg': fg, 'bg': bg}


def parse_class_name(value: Any) -> str:
    """Return a valid class name or raise 422 with the rule."""
    from ldka_ros.learning.classes import validate_class_name

    if not isinstance(value, str) or not value:
        raise ConsoleError(422, 'class_name is missing: type or pick the class of the object')
    if len(value) > MAX_CLASS_NAME:
        raise ConsoleError(422, f'class_name is {len(value)} characters; at most '
                                f'{MAX_CLASS_NAME}')
    try:
        return validate_class_name(value)
    except ValueError as exc:
        raise ConsoleError(422, str(exc)) from None


def parse_stamp(value: Any) -> int:
    """Return a frame stamp in nanoseconds (an integer, or its decimal string)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConsoleError(422, f'stamp must be the frame stamp in nanoseconds, got {value!r}')
    return value


def parse_layers(value: str) -> list[str]:
    """Return the display layers of a frame request (``image`` always comes first)."""
    layers = [v for v in (value or 'image').split(',') if v]
    unknown = [v for v in layers if v not in LAYERS]
    if unknown:
        raise ConsoleError(422, f'unknown layer(s) {unknown}; choose from {list(LAYERS)}')
    return layers


def _token_ok(request: web.Request, token: str) -> bool:
    given = request.headers.get(TOKEN_HEADER, '')
    auth = request.headers.get('Authorization', '')
    if not given and auth.startswith('Bearer '):
        given = auth[len('Bearer '):]
    if not given:
        given = request.query.get('token', '')
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def _error(status: int, message: str) -> web.Response:
    return web.json_response({'error': message, 'status': status}, status=status)


def make_middleware(token: str, max_bytes: int) -> Callable:
    """Return the middleware: token check on /api, every failure a JSON answer."""
    @web.middleware
    async def middleware(request: web.Request, handler):
        is_api = request.path.startswith('/api/')
        if is_api and token and not _token_ok(request, token):
            return _error(401, f'access token missing or wrong: send it as the '
                               f'{TOKEN_HEADER} header, "Authorization: Bearer" or ?token=')
        try:
            return await handler(request)
        except ConsoleError as exc:
            return _error(exc.status, str(exc))
        except web.HTTPRequestEntityTooLarge:
            size = request.content_length
            return _error(413, f'request body too large ({size if size is not None else "?"}'
                               f' bytes; at most {max_bytes})')
        except web.HTTPException as exc:
            if not is_api:
                raise
            return _error(exc.status, exc.reason or 'request refused')
        except Exception as exc:  # noqa: B902 - a handler failure is an answer, not a crash
            LOG.exception('console request %s %s failed', request.method, request.path)
            return _error(500, f'{type(exc).__name__}: {exc}')
    return middleware


async def read_json(request: web.Request) -> dict:
    """Return the request body as a JSON object; 400 when it is not one, 413 if too big."""
    raw = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConsoleError(400, f'request body is not JSON: {exc}') from None
    if not isinstance(body, dict):
        raise ConsoleError(400, 'request body must be a JSON object')
    return body


class ConsoleApp:
    """The routes: each parses and checks its input, then calls the backend in a thread."""

    def __init__(self, backend: Backend, token: str = '',
                 max_request_bytes: int = 1 << 20) -> None:
        self.backend = backend
        self.app = web.Application(middlewares=[make_middleware(token, max_request_bytes)],
                                   client_max_size=int(max_request_bytes))
        get, post = self.app.router.add_get, self.app.router.add_post
        get('/', self.index)
        self.app.router.add_static('/static/', STATIC_DIR)
        get('/api/snapshot', self.simple('snapshot'))
        get('/api/frame/{stamp}.jpg', self.frame)
        post('/api/propose', self.propose)
        get('/api/proposal/{pid}.png', self.proposal)
        post('/api/accept', self.accept)
        get('/api/classes', self.simple('classes'))
        get('/api/labels', self.simple('labels'))
        get('/api/thumb/{frame_id}.jpg', self.thumb)
        post('/api/remove_class', self.remove_class)
        post('/api/remove_frame', self.remove_frame)
        get('/api/versions', self.simple('versions'))
        post('/api/rollback', self.rollback)
        post('/api/learn', self.learn)
        post('/api/cancel', self.simple('cancel'))
        get('/api/job', self.simple('job'))
        get('/api/suggestions', self.simple('suggestions'))
        self.app.router.add_route('*', '/api/{tail:.*}', self.unknown)

    async def _call(self, name: str, *args):
        """Run a backend method in a worker thread (they block on ROS round trips)."""
        return await asyncio.get_running_loop().run_in_executor(
            None, getattr(self.backend, name), *args)

    def simple(self, name: str):
        """Return a handler that answers with the backend method's JSON."""
        async def handler(request: web.Request) -> web.Response:
            if request.method == 'POST':
                await read_json(request)  # size and shape are checked for every POST
            return web.json_response(await self._call(name))
        return handler

    async def index(self, request: web.Request) -> web.Response:
        """Serve the page (no data in it; the API calls carry the token)."""
        return web.FileResponse(STATIC_DIR / 'index.html')

    async def unknown(self, request: web.Request) -> web.Response:
        """Answer an unknown /api route with JSON instead of an HTML page."""
        raise ConsoleError(404, f'no such API route: {request.method} {request.path}')

    async def frame(self, request: web.Request) -> web.Response:
        """Serve one remembered camera frame as JPEG, with overlay or margin layers."""
        stamp = parse_stamp(request.match_info['stamp'])
        layers = parse_layers(request.query.get('layers', 'image'))
        data = await self._call('frame_jpeg', stamp, layers)
        return web.Response(body=data, content_type='image/jpeg',
                            headers={'Cache-Control': 'no-store'})

    async def propose(self, request: web.Request) -> web.Response:
        """Turn a prompt on the frame the operator saw into a proposed mask."""
        body = await read_json(request)
        stamp = parse_stamp(body.get('stamp'))
        return web.json_response(await self._call('propose', stamp, parse_prompt(body)))

    async def proposal(self, request: web.Request) -> web.Response:
        """Serve a proposed mask as a transparent PNG to lay over the frame."""
        data = await self._call('proposal_png', request.match_info['pid'])
        return web.Response(body=data, content_type='image/png')

    async def accept(self, request: web.Request) -> web.Response:
        """Store a proposed mask with its frame and class through the learner."""
        body = await read_json(request)
        pid = body.get('proposal_id')
        if not isinstance(pid, str) or not pid:
            raise ConsoleError(422, 'proposal_id is missing: propose a mask first')
        name = parse_class_name(body.get('class_name'))
        return web.json_response(await self._call('accept', pid, name))

    async def thumb(self, request: web.Request) -> web.Response:
        """Serve the thumbnail of a labelled frame."""
        data = await self._call('thumbnail', request.match_info['frame_id'])
        return web.Response(body=data, content_type='image/jpeg')

    async def remove_class(self, request: web.Request) -> web.Response:
        """Remove a pending class with its labelled frames (the learner's RemoveClass)."""
        body = await read_json(request)
        name = parse_class_name(body.get('name'))
        return web.json_response(await self._call('remove_class', name))

    async def remove_frame(self, request: web.Request) -> web.Response:
        """Remove one pending labelled frame (the learner's RemoveFrame)."""
        body = await read_json(request)
        frame_id = body.get('frame_id')
        if not isinstance(frame_id, str) or not frame_id or len(frame_id) > 64:
            raise ConsoleError(422, f'frame_id must be a frame id string, got {frame_id!r}')
        return web.json_response(await self._call('remove_frame', frame_id))

    async def rollback(self, request: web.Request) -> web.Response:
        """Make a version active ('' = the parent of the active one)."""
        body = await read_json(request)
        version = body.get('version_id', '')
        if not isinstance(version, str) or len(version) > 64:
            raise ConsoleError(422, f'version_id must be a version id string, got {version!r}')
        return web.json_response(await self._call('rollback', version))

    async def learn(self, request: web.Request) -> web.Response:
        """Start a learning goal; progress comes from /api/job."""
        body = await read_json(request)
        classes = body.get('classes', [])
        if not isinstance(classes, list):
            raise ConsoleError(422, 'classes must be a list of class names')
        names = [parse_class_name(c) for c in classes]
        iterations = body.get('iterations', 0)
        if isinstance(iterations, bool) or not isinstance(iterations, int) \
                or not 0 <= iterations <= 1000000:
            raise ConsoleError(422, f'iterations must be an integer in 0..1000000 (0 = the '
                                    f"learner's default), got {iterations!r}")
        return web.json_response(await self._call('learn', names, iterations))


class ConsoleServer:
    """Run a ConsoleApp on ``host:port`` in its own thread and event loop."""

    def __init__(self, app: ConsoleApp, host: str = '127.0.0.1', port: int = 8765) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name='console-http', daemon=True)

    def start(self, timeout: float = 10.0) -> int:
        """Start serving; return the bound port (useful with port 0); raise if it failed."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f'console web server did not start within {timeout} s')
        if self._error is not None:
            raise RuntimeError(f'console web server could not listen on {self.host}:'
                               f'{self.port}: {self._error}')
        return self.port

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: B902 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.app.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # noqa: SLF001
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and end the thread."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        future = asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        try:
            future.result(timeout)
        except Exception as exc:  # noqa: B902 - shutting down anyway
            LOG.warning('console web server shutdown: %s', exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
