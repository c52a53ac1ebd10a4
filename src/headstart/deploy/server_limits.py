"""What one request may cost the prediction server, checked before the cost is paid.

A 10 KB PNG can hold 81 million 1-bit pixels, which decode to 243 MB of RGB; a batch of them
would keep the CPU busy for minutes and several at once would fill the memory. So the server
checks each upload's bytes, each image's pixels and the request's total pixels from the image
headers before it decodes anything, caps the files in one batch, and admits a decode only while
the pixels being decoded by all requests together stay within `decoding_pixels` (about 5 bytes a
pixel at the peak: the decoded image and its RGB copy).
Slow clients are cut off after `read_seconds`.
"""

from __future__ import annotations

import asyncio
import io
import math
import warnings
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from headstart.core.errors import HeadstartError
from headstart.data.images import TooManyPixels, check_size, open_image

DEFAULT_MAX_BYTES = 20 << 20


class BadUpload(Exception):
    """An upload the server refuses: HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class ServerLimits:
    """The server's budgets; every one checked when the server is built (a bad one is a one-line error)."""

    max_bytes: int = DEFAULT_MAX_BYTES  # one upload
    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485  # one image (Pillow's bomb limit)
    max_request_pixels: int = 256_000_000  # all images of one request together
    max_files: int = 64  # images in one /predict/batch
    decode_workers: int = 1  # threads that decode uploads (each keeps its own malloc arena of freed images)
    decoding_pixels: int = 100_000_000  # pixels being decoded at once, all requests together (the memory bound)
    images_in_flight: int = 256  # decoded images waiting for the model, all requests together (~150 MB at 224 px)
    read_seconds: float = 30.0  # a request's headers and body must arrive within this
    max_connections: int = 256  # beyond this uvicorn answers 503

    def __post_init__(self):
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise HeadstartError(f"server limit {name}={value!r}: give a finite number above 0")

    def per_request(self) -> dict[str, int]:
        """What a client must stay within (GET /metadata's "limits")."""
        return {name: getattr(self, name) for name in ("max_bytes", "max_pixels", "max_request_pixels", "max_files")}


def image_pixels(data: bytes, limits: ServerLimits) -> int:
    """Pixels of an upload, read from its header alone; BadUpload for anything refused before decoding."""
    if not data:
        raise BadUpload(400, "empty upload: send an image file")
    if len(data) > limits.max_bytes:
        raise BadUpload(413, f"upload of {len(data):,} bytes is over the {limits.max_bytes:,}-byte limit")
    with _as_bad_upload(), Image.open(io.BytesIO(data)) as opened:
        check_size(*opened.size, limits.max_pixels)
        return opened.size[0] * opened.size[1]


def check_request(uploads: list[bytes], limits: ServerLimits) -> list[int]:
    """Each upload's pixels; 413 for a request over its file or total-pixel budget, before anything is decoded."""
    if len(uploads) > limits.max_files:
        raise BadUpload(413, f"{len(uploads)} files is over the {limits.max_files}-file limit of one request")
    pixels = [image_pixels(data, limits) for data in uploads]
    if sum(pixels) > limits.max_request_pixels:
        raise BadUpload(
            413, f"{sum(pixels):,} pixels in one request is over the {limits.max_request_pixels:,}-pixel request limit"
        )
    return pixels


class Budget:
    """Admits work only while what is held (pixels being decoded, images waiting for the model) stays within a budget.

    Admission is first come, first served: small amounts run side by side, a large one waits until
    it fits (and those after it wait behind it, so a stream of small ones cannot starve it), and one
    over the whole budget runs alone.
    """

    def __init__(self, budget: int):
        self.budget, self.in_use = budget, 0
        self.changed = asyncio.Condition()
        self.tickets, self.serving = 0, 0  # the next ticket to hand out, the ticket admitted next

    @asynccontextmanager
    async def holding(self, amount: int):
        amount = min(amount, self.budget)
        async with self.changed:
            ticket, self.tickets = self.tickets, self.tickets + 1
            await self.changed.wait_for(lambda: ticket == self.serving and self.in_use + amount <= self.budget)
            self.in_use, self.serving = self.in_use + amount, self.serving + 1
            self.changed.notify_all()  # the next ticket may fit too
        try:
            yield
        finally:
            async with self.changed:
                self.in_use -= amount
                self.changed.notify_all()


def decode_upload(data: bytes, limits: ServerLimits) -> Image.Image:
    """The upload as RGB through the same decode `headstart predict` uses (EXIF rotation, alpha, 16-bit)."""
    with _as_bad_upload():
        return open_image(io.BytesIO(data), limits.max_pixels)


@contextmanager
def _as_bad_upload():
    """Pillow's and the size checks' exceptions as BadUpload with the right status."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (TooManyPixels, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadUpload(413, f"decompression bomb refused: {str(err)[:150]}") from None
        except UnidentifiedImageError:
            raise BadUpload(415, "not an image Pillow can read (JPEG, PNG, WebP, ...)") from None
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise BadUpload(422, f"cannot decode the image: {str(err)[:150] or type(err).__name__}") from None
