"""POST /explain: one image in, a PNG of its Grad-CAM heatmap out (headstart.deploy.explain).

The upload is read, checked and decoded as /predict's is (the same budgets and gates); the label
explained is the query's `label`, else the most probable one. A model without PyTorch layers (an
exported file) or a server without grad-cam answers 501 with the one-line reason.
"""

import asyncio

from PIL import Image

from headstart.core.errors import HeadstartError
from headstart.deploy.explain import check_explainable, heatmaps, label_strip, png
from headstart.deploy.predictor import Predictor
from headstart.deploy.server_limits import decode_upload


def heatmap_png(predictor: Predictor, image: Image.Image, label: str | None) -> bytes:
    labels = None if label is None else [predictor.classes.index(label)]
    return png(label_strip(heatmaps(predictor, [image], labels=labels)[0]))


def add_explain(app, answers) -> None:
    """Add the /explain route to `app`, answering through `answers` (server.Answers: budgets, gates, the model thread)."""
    from fastapi import Query, Request
    from fastapi.responses import JSONResponse, Response

    predictor = answers.predictor

    @app.post("/explain")
    async def explain(request: Request, label: str | None = Query(None, max_length=1000)):
        try:
            check_explainable(predictor)
        except HeadstartError as err:
            return JSONResponse({"detail": str(err)}, status_code=501)
        if label is not None and label not in predictor.classes:
            return JSONResponse(
                {"detail": f"unknown label {label!r}: GET /metadata lists the classes"}, status_code=400
            )

        async def drawn():
            uploads, pixels = await answers.uploads(request, ("file",), single=True)
            loop = asyncio.get_running_loop()
            async with answers.in_flight.holding(1):
                async with answers.decoding.holding(pixels[0]):
                    image = await loop.run_in_executor(answers.decoder, decode_upload, uploads[0][1], answers.limits)
                # On the model's one thread: Grad-CAM's hooks and a batch of predictions never overlap.
                data = await loop.run_in_executor(answers.batcher.executor, heatmap_png, predictor, image, label)
            return Response(data, media_type="image/png")

        return await answers.guarded(drawn())
