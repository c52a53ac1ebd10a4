"""A prediction server: FastAPI + uvicorn around a Predictor, with requests batched on the server.

    headstart serve RUN_OR_EXPORT [--host 127.0.0.1] [--port 8000]

    POST /predict        one image (multipart field `file`, or the raw body) -> {"image", "top": [{"label", "probability"}]}
                         (+ "unknown", "unknown_score" where the model has an unknown-image detector)
    POST /predict/batch  several (multipart fields `files`) -> a list of the same entries
    POST /explain        one image [?label=NAME] -> a PNG of its Grad-CAM heatmap (server_explain.py)
    GET  /health, GET /metadata (classes, task, preprocessing, batching; calibration and thresholds when the model has them), GET / (a page)

Concurrent requests wait up to `window_ms` for each other and run as one batch of at most
`max_batch` images (`max_batch=1` runs them one by one). Every upload is decoded as `headstart
predict` decodes a file (EXIF rotation, alpha on white, 16-bit scaled), in a small pool of decode
threads, after the request's budgets are checked on the image headers (server_limits.py); a bad
upload is a 4xx with a one-line `detail`, and the server goes on serving. Only the Host names in
`allowed_hosts` are answered (a web page elsewhere cannot reach a local server through DNS
rebinding), and the page loads nothing from other sites (no /docs, which would fetch from a CDN).

Example:
    >>> app = headstart.deploy.server.create_app(headstart.load("runs/hymenoptera-tf_efficientnet_lite0"))
    >>> # uvicorn.run(app) — or: headstart serve runs/hymenoptera-tf_efficientnet_lite0
"""

import asyncio
import html
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from headstart.core.errors import HeadstartError
from headstart.core.install import install_hint
from headstart.deploy.explain import check_explainable
from headstart.deploy.predictor import Predictor
from headstart.deploy.server_explain import add_explain
from headstart.deploy.server_limits import (
    DEFAULT_MAX_BYTES,
    BadUpload,
    Budget,
    ServerLimits,
    check_request,
    decode_upload,
)
from headstart.deploy.server_page import PAGE
from headstart.deploy.server_uploads import ClientGone, ShuttingDown, read_uploads

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_WINDOW_MS = 1000.0  # a batch that waits longer than a second to fill is a mistake, not a setting


class Batcher:
    """Collects concurrent requests into batches: a short window, a maximum size, one model call per batch."""

    def __init__(self, predictor: Predictor, max_batch: int, window_ms: float):
        self.check(max_batch, window_ms)
        self.predictor, self.max_batch, self.window = predictor, max_batch, window_ms / 1000
        self.queue: asyncio.Queue | None = None
        # One model thread: batches run one after another while the event loop keeps accepting requests.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="headstart-model")
        self.batches = 0

    @staticmethod
    def check(max_batch: int, window_ms: float) -> None:
        """A one-line error for a batch size or window the server cannot run with."""
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise HeadstartError(f"max_batch {max_batch!r}: give a whole number of 1 or more")
        if not math.isfinite(window_ms) or not 0 <= window_ms <= MAX_WINDOW_MS:
            raise HeadstartError(f"window_ms {window_ms!r}: give a number from 0 to {MAX_WINDOW_MS:g}")

    @asynccontextmanager
    async def lifespan(self, app):
        """The batching loop runs as long as the application does."""
        self.queue = asyncio.Queue()
        task = asyncio.create_task(self.run())
        yield
        task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def probabilities(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities (and unknown-image scores, or None) for transformed images [3, S, S], in whichever batches they land in."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in inputs]
        queue = self.queue
        assert queue is not None  # lifespan creates it before the app serves a request
        for tensor, future in zip(inputs, futures):
            queue.put_nowait((tensor, future))
        rows = await asyncio.gather(*futures)
        scores = [score for _, score in rows if score is not None]
        return torch.stack([row for row, _ in rows]), torch.stack(scores) if len(scores) == len(rows) else None

    async def collect(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        queue = self.queue
        assert queue is not None  # lifespan creates it before starting this loop
        items = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window
        while len(items) < self.max_batch:
            if not queue.empty():
                items.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self.collect()
            batch = torch.stack([tensor for tensor, _ in items])
            try:
                rows, scores = await loop.run_in_executor(self.executor, self.predictor.batch_outputs, batch)
            except Exception as err:  # noqa: BLE001 - the waiting requests get the error, the loop goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.batches += 1
            for index, ((_, future), row) in enumerate(zip(items, rows)):
                if not future.done():
                    future.set_result((row, None if scores is None else scores[index]))


def metadata_of(predictor: Predictor, batcher: Batcher, limits: ServerLimits) -> dict:
    info = {
        "classes": predictor.classes,
        "task": predictor.task.name,
        "preprocessing": predictor.preprocessing,
        "batching": {"max_batch": batcher.max_batch, "window_ms": batcher.window * 1000},
        "limits": limits.per_request(),
    }
    temperature = getattr(predictor, "temperature", None)
    if temperature is not None:  # calibration is reported only when the model has one
        info["calibration"] = {"temperature": temperature}
    if predictor.thresholds is not None:  # a multi-label model gives each tag at or above its threshold
        info["thresholds"] = dict(zip(predictor.classes, predictor.thresholds))
    if predictor.unknown is not None:  # answers carry "unknown" and "unknown_score" (headstart.deploy.unknown)
        info["unknown"] = asdict(predictor.unknown)
    return info


def page_for(predictor: Predictor, title: str) -> str:
    count = len(predictor.classes)
    classes = ", ".join(predictor.classes[:20]) + (" …" if count > 20 else "")
    page = PAGE.replace("__TITLE__", html.escape(title)).replace(
        "__CLASSES__", f"{count} {'class' if count == 1 else 'classes'}: {html.escape(classes)}"
    )
    return page.replace("__EXPLAIN__", "true" if explainable(predictor) else "false")


def explainable(predictor: Predictor) -> bool:
    """Whether POST /explain can draw this model's heatmaps: the page asks only then (else every drop logs a 501)."""
    try:
        check_explainable(predictor)
    except HeadstartError:
        return False
    return True


class Answers:
    """One request's way through the server: read, check the budgets, decode within the gates, batch.

    Two gates bound the memory all requests together can take: the pixels being decoded, and the
    images decoded and waiting for the model (each a float tensor of the input size), held from
    before a request's first decode until its answer, so a flood of tiny images cannot queue
    without limit.
    """

    def __init__(self, predictor: Predictor, batcher: Batcher, limits: ServerLimits):
        self.predictor, self.batcher, self.limits = predictor, batcher, limits
        self.decoder = ThreadPoolExecutor(limits.decode_workers, thread_name_prefix="headstart-decode")
        self.decoding = Budget(limits.decoding_pixels)
        self.in_flight = Budget(limits.images_in_flight)

    def prepare(self, data: bytes) -> torch.Tensor:
        return self.predictor.transform(decode_upload(data, self.limits))

    async def uploads(
        self, request, fields: tuple[str, ...], single: bool
    ) -> tuple[list[tuple[str, bytes]], list[int]]:
        """The request's files and each one's pixels, every budget checked on the headers."""
        uploads = await read_uploads(request, self.limits, fields)
        if single and len(uploads) > 1:
            raise BadUpload(400, "one image per /predict request; use /predict/batch for several")
        return uploads, check_request([data for _, data in uploads], self.limits)

    async def probabilities(
        self, uploads: list[tuple[str, bytes]], pixels: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        loop, tensors = asyncio.get_running_loop(), []
        async with self.in_flight.holding(len(uploads)):
            for (_, data), count in zip(uploads, pixels):
                async with self.decoding.holding(count):
                    tensors.append(await loop.run_in_executor(self.decoder, self.prepare, data))
            return await self.batcher.probabilities(tensors)

    async def answer(self, request, top_k: int, fields: tuple[str, ...], single: bool):
        async def entries():
            uploads, pixels = await self.uploads(request, fields, single)
            probabilities, scores = await self.probabilities(uploads, pixels)
            found = self.predictor.entries([name for name, _ in uploads], probabilities, top_k, scores)
            return found[0] if single else found

        return await self.guarded(entries())

    async def guarded(self, work):
        """`work`'s answer, or the refusal: a 4xx with a one-line detail for a bad upload, 503 when shutting down."""
        from fastapi.responses import JSONResponse, Response

        try:
            return await work
        except BadUpload as err:
            log.info("refused an upload (%d): %s", err.status, err.reason)
            return JSONResponse({"detail": err.reason}, status_code=err.status)
        except ClientGone:
            log.info("a client closed its connection during its upload")
            return Response(status_code=400)  # nobody is left to read it
        except ShuttingDown:
            log.info("shutting down: dropped an upload that was still arriving")
            return JSONResponse({"detail": "the server is shutting down"}, status_code=503)


def create_app(
    predictor: Predictor,
    max_batch: int = 16,
    window_ms: float = 5.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int | None = None,
    title: str = "headstart classifier",
    limits: ServerLimits | None = None,
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS,
):
    """The FastAPI application serving `predictor` (see the module docstring for the routes).

    `limits` sets every budget (server_limits.ServerLimits); `max_bytes` and `max_pixels` are the
    two most asked-for, kept as arguments of their own. `allowed_hosts=("*",)` answers any Host.
    """
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import HTMLResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    limits = limits or ServerLimits(max_bytes=max_bytes, max_pixels=max_pixels or ServerLimits.max_pixels)
    batcher = Batcher(predictor, max_batch, window_ms)
    answers = Answers(predictor, batcher, limits)
    app = FastAPI(title=title, lifespan=batcher.lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.batcher = batcher

    @app.post("/predict")
    async def predict(request: Request, top_k: int = Query(3, ge=1)):
        return await answers.answer(request, top_k, ("file",), single=True)

    @app.post("/predict/batch")
    async def predict_batch(request: Request, top_k: int = Query(3, ge=1)):
        return await answers.answer(request, top_k, ("files", "file"), single=False)

    add_explain(app, answers)

    @app.get("/health")
    async def health():
        return {"status": "ok", "batches": batcher.batches}

    @app.get("/metadata")
    async def metadata():
        return metadata_of(predictor, batcher, limits)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return page_for(predictor, title)

    return app


def listening_socket(host: str, port: int):
    """Bound here so a taken port or bad host is the one-line error, not uvicorn's exit."""
    import socket

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as err:
        raise HeadstartError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    return sock


def serve(
    source: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 16,
    window_ms: float = 5.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    device: str = "auto",
    allowed_hosts: tuple[str, ...] | None = None,
    read_seconds: float = ServerLimits.read_seconds,
    dry_run: bool = False,
    unknown: bool = True,
) -> None:
    """Serve a run folder, checkpoint, exported file or Hub folder over HTTP until interrupted (or SIGTERM).

    `allowed_hosts` defaults to the loopback names when `host` is a loopback address, else to any.
    A client slower than `read_seconds` to send its request is cut off. `dry_run` checks every
    setting, loads the model and takes the port, then returns without serving.
    """
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401 - for uploads
        import uvicorn
    except ImportError as err:
        raise HeadstartError(
            f"serving needs fastapi, uvicorn and python-multipart ({err}); {install_hint('serve')}"
        ) from None
    from headstart.deploy.loading import load
    from headstart.deploy.server_protocol import deadline_protocol

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise HeadstartError(f"port {port!r}: give a number from 1 to 65535 (0 picks a free one)")
    ServerLimits(max_bytes=max_bytes)  # a one-line error for nan, inf or a negative size, before int() sees it
    limits = ServerLimits(max_bytes=int(max_bytes), read_seconds=read_seconds)
    Batcher.check(max_batch, window_ms)
    if allowed_hosts is None:
        allowed_hosts = LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else ("*",)
    predictor = load(source, device=device, unknown=unknown)
    app = create_app(
        predictor, max_batch, window_ms, title=Path(source).name, limits=limits, allowed_hosts=allowed_hosts
    )
    sock = listening_socket(host, port)
    log.info(
        "%s %s on http://%s:%d (batches of up to %d, %g ms window)",
        "would serve" if dry_run else "serving", source, host, sock.getsockname()[1], max_batch, window_ms,
    )  # fmt: skip
    if dry_run:
        sock.close()
        return
    config = uvicorn.Config(
        app,
        log_level="warning",
        http=deadline_protocol(limits.read_seconds),
        limit_concurrency=limits.max_connections,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
    uvicorn.Server(config).run(sockets=[sock])


SHUTDOWN_SECONDS = 3  # after SIGTERM, requests still running (a slow upload) are cancelled after this
