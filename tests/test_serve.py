"""The prediction server: in-process and over a real socket on 127.0.0.1, bad uploads, batching, the page in chromium."""

import io
import json
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import headstart
from headstart.cli import main
from headstart.core.checkpoint import load_checkpoint
from headstart.deploy.server import create_app, listening_socket
from tests.conftest import browser, tiny_recipe

LOCAL = "http://127.0.0.1"  # the server answers loopback Host names only (DNS rebinding)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.conftest import CLASS_COLOURS, with_temperature, write_images

    root = tmp_path_factory.mktemp("serve")
    folder = write_images(root / "data", CLASS_COLOURS, per_class=8)
    return with_temperature(headstart.train(tiny_recipe(folder, root / "runs"), quiet=True).run_dir), folder


@contextmanager
def running(app):
    """uvicorn serving `app` on 127.0.0.1 (a free port) in a thread; stopped and joined on exit."""
    import uvicorn

    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive()


def predict_json(run_dir, paths, capsys) -> list[dict]:
    """`predict --json`'s entries; the unknown score compared to 1e-4, since it changes that much with the batch."""
    assert main(["predict", str(run_dir), *map(str, paths), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert all(isinstance(entry["unknown"], bool) for entry in entries)  # the tiny run has a detector
    return [{**entry, "unknown_score": pytest.approx(entry["unknown_score"], rel=1e-4)} for entry in entries]


def png_bytes(colour=(200, 40, 40), size=(20, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def bomb_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG whose header claims width x height pixels: Pillow must refuse it before decoding."""
    data = bytearray(png_bytes(size=(1, 1)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


BAD_UPLOADS = {
    "text": (b"this is not an image\n" * 10, 415, "not an image"),
    "truncated": (png_bytes(size=(64, 64))[:80], 422, "cannot decode"),
    "bomb": (bomb_header(), 413, "bomb"),
    "empty": (b"", 400, "empty upload"),
}


def test_in_process_predictions_equal_predict_and_bad_uploads_are_4xx(run, capsys):
    run_dir, folder = run
    paths = sorted((folder / "red").iterdir())[:2] + sorted((folder / "blue").iterdir())[:1]
    expected = predict_json(run_dir, paths, capsys)
    app = create_app(headstart.load(run_dir, device="cpu"), max_batch=4, window_ms=2)
    with TestClient(app, base_url=LOCAL) as client:
        answer = client.post("/predict", files={"file": (str(paths[0]), paths[0].read_bytes(), "image/png")})
        assert answer.status_code == 200 and answer.json() == expected[0]
        raw = client.post("/predict", content=paths[1].read_bytes(), params={"name": str(paths[1])})
        assert raw.json() == expected[1]
        batch = client.post("/predict/batch", files=[("files", (str(p), p.read_bytes(), "image/png")) for p in paths])
        assert batch.json() == expected
        for name, (data, status, words) in BAD_UPLOADS.items():
            refused = client.post("/predict", files={"file": (name, data, "application/octet-stream")})
            assert refused.status_code == status, name
            assert words in refused.json()["detail"] and "\n" not in refused.json()["detail"]
            assert client.post("/predict", content=paths[0].read_bytes()).status_code == 200  # still serving
        text_field = client.post(
            "/predict", data={"file": "text"}, files={"other": ("x.png", png_bytes(), "image/png")}
        )
        assert text_field.status_code == 400 and "must be a file upload" in text_field.json()["detail"]
        assert client.get("/health").json()["status"] == "ok"
        metadata = client.get("/metadata").json()
        assert metadata["classes"] == ["blue", "green", "red"] and metadata["preprocessing"]["image_size"] == 16
        # The run has a temperature; /metadata reports the one the predictions use.
        assert metadata["calibration"]["temperature"] == load_checkpoint(run_dir / "best.pt").temperature


def test_oversized_upload_is_413_and_pixel_limit_holds(run):
    run_dir, folder = run
    app = create_app(headstart.load(run_dir, device="cpu"), max_bytes=2000, max_pixels=50 * 50)
    with TestClient(app, base_url=LOCAL) as client:
        noisy = io.BytesIO()
        Image.effect_noise((100, 100), 80).convert("RGB").save(noisy, "PNG")
        assert client.post("/predict", content=noisy.getvalue()).status_code == 413
        big = client.post("/predict", content=png_bytes(size=(60, 60)))
        assert big.status_code == 413 and "pixel limit" in big.json()["detail"]
        assert client.post("/predict", content=png_bytes(size=(40, 40))).status_code == 200


def test_real_socket_batches_concurrent_requests_and_survives_bad_ones(run, capsys):
    run_dir, folder = run
    paths = sorted(folder.rglob("*.png"))[:16]
    expected = {entry["image"]: entry for entry in predict_json(run_dir, paths, capsys)}
    app = create_app(headstart.load(run_dir, device="cpu"), max_batch=16, window_ms=50)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:

        def one(path):
            return client.post("/predict", files={"file": (str(path), path.read_bytes(), "image/png")}).json()

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, paths))
        assert answers == [expected[str(p)] for p in paths]
        assert client.get("/health").json()["batches"] < len(paths)  # requests shared model calls
        refused = client.post("/predict", content=BAD_UPLOADS["truncated"][0])
        assert refused.status_code == 422
        assert one(paths[0]) == expected[str(paths[0])]


# Injected into a copy of the real page: drops the test image on the drop zone, as a person would.
DROP = """<script>
window.addEventListener('load', async () => {
  const blob = await (await fetch('/test-image.png')).blob();
  const transfer = new DataTransfer();
  transfer.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
  document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
});
</script>"""


def test_page_shows_a_prediction_for_a_dropped_image_in_chromium(run):
    from fastapi.responses import HTMLResponse, Response

    run_dir, folder = run
    image = sorted((folder / "green").iterdir())[0]
    predictor = headstart.load(run_dir, device="cpu")
    expected = predictor.predict([image], top_k=1)[0][0][0]
    app = create_app(predictor)
    page = TestClient(app, base_url=LOCAL).get("/").text
    assert 'id="drop"' in page
    app.get("/test-page", response_class=HTMLResponse)(lambda: page.replace("</body>", DROP + "</body>"))
    app.get("/test-image.png")(lambda: Response(image.read_bytes(), media_type="image/png"))
    with running(app) as url:
        result = subprocess.run(
            [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--virtual-time-budget=10000", "--dump-dom", f"{url}/test-page"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    shown = re.findall(r'<li class="prediction">([^<]*)<', result.stdout)
    assert shown, f"no prediction on the page: {result.stdout[-800:]} {result.stderr[-500:]}"
    assert shown[0].startswith(expected + " ") and len(shown) == 3
    # the top label's heatmap (POST /explain) is shown below the labels
    assert re.search(r'<img id="heatmap"[^>]*src="blob:', result.stdout), result.stdout[-800:]


@pytest.mark.slow
def test_serve_command_answers_and_a_taken_port_is_one_line(run, capsys):
    run_dir, folder = run
    with listening_socket("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        taken.listen()
        assert main(["serve", str(run_dir), "--port", str(port)]) == 2
        assert capsys.readouterr().err.startswith(f"headstart: error: cannot listen on 127.0.0.1:{port}")
    free = listening_socket("127.0.0.1", 0)
    port = free.getsockname()[1]
    free.close()
    process = subprocess.Popen([sys.executable, "-m", "headstart.cli", "serve", str(run_dir), "--port", str(port)])
    try:
        image = sorted((folder / "red").iterdir())[0]
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/predict", content=image.read_bytes(), timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, "headstart serve did not come up"
                time.sleep(0.2)
        assert answer.status_code == 200
        assert answer.json()["top"][0]["label"] == headstart.load(run_dir).predict([image], top_k=1)[0][0][0]
    finally:
        process.terminate()
        process.wait(30)


# ----------------------------------------------------------------------------- budgets, hosts, a bounded soak


def test_batch_over_its_file_or_pixel_budget_is_413_before_decoding(run):
    from headstart.deploy.server_limits import ServerLimits

    run_dir, _ = run
    limits = ServerLimits(max_files=3, max_request_pixels=3 * 20 * 20)
    app = create_app(headstart.load(run_dir, device="cpu"), limits=limits)
    with TestClient(app, base_url=LOCAL) as client:

        def batch(count, size=(20, 20)):
            files = [("files", (f"{i}.png", png_bytes(size=size), "image/png")) for i in range(count)]
            return client.post("/predict/batch", files=files)

        assert batch(3).status_code == 200
        too_many = batch(4)
        assert too_many.status_code == 413 and "file" in too_many.json()["detail"]
        too_big = batch(2, size=(30, 30))
        assert too_big.status_code == 413 and "request limit" in too_big.json()["detail"]
        assert client.get("/metadata").json()["limits"]["max_files"] == 3


def test_only_allowed_host_names_are_answered_and_nothing_loads_from_a_cdn(run):
    run_dir, _ = run
    app = create_app(headstart.load(run_dir, device="cpu"))
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
        assert client.get("/health", headers={"Host": "attacker.example"}).status_code == 400
        assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
        assert "cdn" not in client.get("/").text.lower()
    anyone = create_app(headstart.load(run_dir, device="cpu"), allowed_hosts=("*",))
    with TestClient(anyone, base_url="http://attacker.example") as client:
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    "flags",
    [["--max-mb", "nan"], ["--max-mb", "inf"], ["--max-mb", "-1"], ["--window-ms", "inf"], ["--window-ms", "-1"],
     ["--port", "99999"], ["--port", "-1"], ["--timeout", "0"], ["--max-batch", "0"]],
)  # fmt: skip
def test_bad_serve_flags_are_one_line_errors(run, capsys, flags):
    assert main(["serve", str(run[0]), *flags, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headstart: error:") and err.count("\n") == 1


@pytest.mark.slow
def test_soak_memory_stays_bounded_slow_clients_are_cut_off_and_sigterm_stops_it(run, tmp_path):
    from tests import soak

    log = tmp_path / "serve.log"
    # A 4 s read deadline outlasts the 3 s shutdown grace, so SIGTERM cancels an upload still arriving.
    process, url = soak.start(run[0], log, "--timeout", "4")
    try:
        codes = soak.mixed_requests(url, count=200, clients=16)
        assert set(codes) <= {200, 422} and codes[422] == 40, codes
        # 9000 x 9000 1-bit PNGs: 10 KB each, 243 MB each once decoded; eight at once took 4.1 GB before.
        assert soak.heavy_uploads(url, count=8, side=9000) == [200] * 8
        assert soak.peak_rss_mb(process) < SOAK_MEMORY_BOUND_MB
        assert soak.slow_clients(url, count=20, wait=8) == 20
        soak.vanishing_uploads(url, count=10)
        assert soak.mixed_requests(url, count=20, clients=4, bad_every=1000) == {200: 20}  # still serving
        assert soak.seconds_to_stop_during_an_upload(process, url) < 5
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert text.count("closed its connection during its upload") == 10
    assert "dropped an upload that was still arriving" in text


SOAK_MEMORY_BOUND_MB = 1500  # the model, two images decoding at a time (about 250 MB each) and Python


def test_a_budget_admits_work_only_while_it_fits():
    """The gates behind the memory bound: pixels being decoded, images waiting for the model."""
    import asyncio

    from headstart.deploy.server_limits import Budget

    async def scenario() -> list[str]:
        budget, order = Budget(3), []

        async def hold(name: str, amount: int, seconds: float):
            async with budget.holding(amount):
                order.append(f"{name} in ({budget.in_use})")
                await asyncio.sleep(seconds)
            order.append(f"{name} out")

        await asyncio.gather(hold("a", 2, 0.05), hold("b", 2, 0.0), hold("huge", 10, 0.0), hold("small", 1, 0.0))
        return order

    order = asyncio.run(scenario())
    assert order[0] == "a in (2)" and order.index("b in (2)") > order.index("a out")  # b waited for a
    assert "huge in (3)" in order  # more than the whole budget runs alone, never forever
    # First come, first served: the small one that fits does not pass the huge one waiting before it.
    assert order.index("small in (1)") > order.index("huge out")
