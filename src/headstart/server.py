"""A prediction server: FastAPI + uvicorn around a Predictor, with requests batched on the server.

    headstart serve RUN_OR_EXPORT [--host 127.0.0.1] [--port 8000]

    POST /predict        one image (multipart field `file`, or the raw body) -> {"image", "top": [{"label", "probability"}]}
    POST /predict/batch  several (multipart fields `files`) -> a list of the same entries
    GET  /health, GET /metadata (classes, preprocessing, batching; calibration when the model has one), GET / (a page)

Concurrent requests wait up to `window_ms` for each other and run as one batch of at most
`max_batch` images (`max_batch=1` runs them one by one). Uploads are decoded in worker threads
under a byte limit, Pillow's decompression-bomb pixel limit and the aspect-ratio limit training
uses; a bad upload is a 4xx with a one-line `detail`, and the server goes on serving.

Example:
    >>> app = headstart.server.create_app(headstart.load("runs/hymenoptera-tf_efficientnet_lite0"))
    >>> # uvicorn.run(app) — or: headstart serve runs/hymenoptera-tf_efficientnet_lite0
"""

import asyncio
import html
import io
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from headstart.data import MAX_ASPECT_RATIO
from headstart.errors import HeadstartError
from headstart.inference import Predictor, prediction_entry
from headstart.server_page import PAGE

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 << 20


class BadUpload(Exception):
    """An upload the server refuses: HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def decode_upload(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """A decoded RGB image, or BadUpload saying why not (checked before any pixel is decoded where it can be)."""
    if not data:
        raise BadUpload(400, "empty upload: send an image file")
    if len(data) > max_bytes:
        raise BadUpload(413, f"upload of {len(data):,} bytes is over the {max_bytes:,}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise BadUpload(
                        413, f"{width}x{height} pixels is over the {max_pixels:,}-pixel limit (decompression bomb?)"
                    )
                if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
                    raise BadUpload(422, f"extreme aspect ratio {width}x{height}")
                opened.load()
                return opened.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadUpload(413, f"decompression bomb refused: {str(err)[:150]}") from None
    except UnidentifiedImageError:
        raise BadUpload(415, "not an image Pillow can read (JPEG, PNG, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise BadUpload(422, f"cannot decode the image: {str(err)[:150] or type(err).__name__}") from None


def prepare(data: bytes, max_bytes: int, max_pixels: int, transform) -> torch.Tensor:
    return transform(decode_upload(data, max_bytes, max_pixels))


class Batcher:
    """Collects concurrent requests into batches: a short window, a maximum size, one model call per batch."""

    def __init__(self, predictor: Predictor, max_batch: int, window_ms: float):
        if max_batch < 1 or window_ms < 0:
            raise HeadstartError(
                f"max_batch {max_batch} / window_ms {window_ms}: give max_batch >= 1 and window_ms >= 0"
            )
        self.predictor, self.max_batch, self.window = predictor, max_batch, window_ms / 1000
        self.queue: asyncio.Queue | None = None
        # One model thread: batches run one after another while the event loop keeps accepting requests.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="headstart-model")
        self.batches = 0

    @asynccontextmanager
    async def lifespan(self, app):
        """The batching loop runs as long as the application does."""
        self.queue = asyncio.Queue()
        task = asyncio.create_task(self.run())
        yield
        task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def probabilities(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Probabilities for transformed images [3, S, S], computed in whichever batches they land in."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in inputs]
        for tensor, future in zip(inputs, futures):
            self.queue.put_nowait((tensor, future))
        return torch.stack(await asyncio.gather(*futures))

    async def collect(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        items = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window
        while len(items) < self.max_batch:
            if not self.queue.empty():
                items.append(self.queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self.collect()
            batch = torch.stack([tensor for tensor, _ in items])
            try:
                rows = await loop.run_in_executor(self.executor, self.predictor.batch_probabilities, batch)
            except Exception as err:  # noqa: BLE001 - the waiting requests get the error, the loop goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.batches += 1
            for (_, future), row in zip(items, rows):
                if not future.done():
                    future.set_result(row)


async def read_body(request, limit: int) -> bytes:
    """The request body, refused past `limit` bytes before it is all read."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BadUpload(413, f"request of {int(length):,} bytes is over the {limit:,}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadUpload(413, f"request is over the {limit:,}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_uploads(request, limit: int, fields: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded file: multipart fields `fields`, or the whole body as one image."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    body = await read_body(request, limit + MULTIPART_OVERHEAD)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return [(request.query_params.get("name", "body"), body)]

    async def once():
        yield body

    try:
        form = await MultiPartParser(request.headers, once()).parse()
    except MultiPartException as err:
        raise BadUpload(400, f"malformed multipart upload: {err.message}") from None
    items = [item for field in fields for item in form.getlist(field)]
    if not items:
        raise BadUpload(400, f"no image: send multipart field '{fields[0]}' or the image itself as the body")
    uploads = []
    for item in items:
        if not isinstance(item, UploadFile):
            raise BadUpload(400, f"field '{fields[0]}' must be a file upload, not text")
        uploads.append((item.filename or "upload", await item.read()))
    return uploads


MULTIPART_OVERHEAD = 64 << 10  # boundaries and part headers on top of the image bytes


def metadata_of(predictor: Predictor, batcher: Batcher, max_bytes: int, max_pixels: int) -> dict:
    info = {
        "classes": predictor.classes,
        "preprocessing": predictor.preprocessing,
        "batching": {"max_batch": batcher.max_batch, "window_ms": batcher.window * 1000},
        "limits": {"max_bytes": max_bytes, "max_pixels": max_pixels},
    }
    temperature = getattr(predictor, "temperature", None)
    if temperature is not None:  # calibration is reported only when the model has one
        info["calibration"] = {"temperature": temperature}
    return info


def page_for(predictor: Predictor, title: str) -> str:
    classes = ", ".join(predictor.classes[:20]) + (" …" if len(predictor.classes) > 20 else "")
    return PAGE.replace("__TITLE__", html.escape(title)).replace(
        "__CLASSES__", f"{len(predictor.classes)}: {html.escape(classes)}"
    )


def create_app(
    predictor: Predictor,
    max_batch: int = 16,
    window_ms: float = 5.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int | None = None,
    title: str = "headstart classifier",
):
    """The FastAPI application serving `predictor` (see the module docstring for the routes)."""
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    batcher = Batcher(predictor, max_batch, window_ms)
    pixels = max_pixels or Image.MAX_IMAGE_PIXELS or 89_478_485

    app = FastAPI(title=title, lifespan=batcher.lifespan)
    app.state.batcher = batcher

    async def answer(request: Request, top_k: int, fields: tuple[str, ...], single: bool):
        try:
            uploads = await read_uploads(request, max_bytes, fields)
            if single and len(uploads) > 1:
                raise BadUpload(400, "one image per /predict request; use /predict/batch for several")
            # Decoding and the eval transform run in worker threads, so the model thread only runs the model.
            inputs = [
                await run_in_threadpool(prepare, data, max_bytes, pixels, predictor.transform) for _, data in uploads
            ]
        except BadUpload as err:
            log.info("refused an upload (%d): %s", err.status, err.reason)
            return JSONResponse({"detail": err.reason}, status_code=err.status)
        probabilities = await batcher.probabilities(inputs)
        top = predictor.top_labels(probabilities, top_k)
        entries = [prediction_entry(name, labels) for (name, _), labels in zip(uploads, top)]
        return entries[0] if single else entries

    @app.post("/predict")
    async def predict(request: Request, top_k: int = Query(3, ge=1)):
        return await answer(request, top_k, ("file",), single=True)

    @app.post("/predict/batch")
    async def predict_batch(request: Request, top_k: int = Query(3, ge=1)):
        return await answer(request, top_k, ("files", "file"), single=False)

    @app.get("/health")
    async def health():
        return {"status": "ok", "batches": batcher.batches}

    @app.get("/metadata")
    async def metadata():
        return metadata_of(predictor, batcher, max_bytes, pixels)

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
) -> None:
    """Serve a run folder, checkpoint, exported file or Hub folder over HTTP until interrupted."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401 - for uploads
        import uvicorn
    except ImportError as err:
        raise HeadstartError(
            f"serving needs fastapi, uvicorn and python-multipart ({err}); pip install 'headstart[serve]'"
        ) from None
    from headstart.loading import load

    predictor = load(source, device=device)
    app = create_app(predictor, max_batch, window_ms, int(max_bytes), title=Path(source).name)
    sock = listening_socket(host, port)
    log.info(
        "serving %s on http://%s:%d (batches of up to %d, %.0f ms window)", source, host, port, max_batch, window_ms
    )
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
