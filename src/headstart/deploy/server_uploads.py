"""Reading a request's images: the body within its byte and time budgets, then its multipart files or the body itself."""

import asyncio

from headstart.deploy.server_limits import BadUpload, ServerLimits


class ClientGone(Exception):
    """The client closed the connection before its upload was all read."""


class ShuttingDown(Exception):
    """The server stopped (SIGTERM) while an upload was still arriving: uvicorn cancelled the read."""


async def read_body(request, limit: int, seconds: float) -> bytes:
    """The request body, refused past `limit` bytes before it is all read, or when it is slower than `seconds`."""
    from starlette.requests import ClientDisconnect

    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BadUpload(413, f"request of {int(length):,} bytes is over the {limit:,}-byte limit")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadUpload(413, f"request is over the {limit:,}-byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise BadUpload(408, f"the upload did not arrive within {seconds:g} s") from None
    except ClientDisconnect:
        raise ClientGone() from None
    except asyncio.CancelledError:  # uvicorn's graceful-shutdown timeout: one log line, not a traceback
        raise ShuttingDown() from None
    return b"".join(chunks)


async def read_uploads(request, limits: ServerLimits, fields: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded file: multipart fields `fields`, or the whole body as one image."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    body = await read_body(request, limits.max_bytes + MULTIPART_OVERHEAD, limits.read_seconds)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return [(request.query_params.get("name", "body"), body)]

    async def once():
        yield body

    try:
        form = await MultiPartParser(request.headers, once(), max_files=limits.max_files + 1).parse()
    except MultiPartException as err:
        status = 413 if "Too many files" in err.message else 400
        raise BadUpload(status, f"malformed multipart upload: {err.message}") from None
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
