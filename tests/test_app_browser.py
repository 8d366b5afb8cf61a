"""The web demo in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The app is served in this process on 127.0.0.1 at a free port; the browser uploads a generated Shapes video,
types two expressions, runs, and the test checks the overlay the page shows (frame count, size) and the mask zip
the page offers (it decodes, and equals ``model.predict`` on the same file); then a broken upload shows the error
text in the page, and two models give two overlays and their IoU plot. It also takes the screenshot of
docs/app.md (written there when ``LVSEG_APP_SCREENSHOT`` names the file).

Needs ``pip install "lvseg[app-test]"`` (Gradio, Playwright) and a Chromium (``apt-get install chromium``, or
``LVSEG_TEST_CHROMIUM=/path/to/chrome``); without one of them the tests are skipped, and say which is missing (a
Chromium that is there but does not start fails them).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lvseg.registry import DEFAULT_MODEL

pytestmark = pytest.mark.app

# Chromium's own background connections (updates, sync, field trials) are refused offline, many at a time
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
TIMEOUT_MS = 180_000  # a run on 2 loaded CPU cores; it takes about 10 s


def _chromium() -> str:
    path = os.environ.get("LVSEG_TEST_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    if not path:
        pytest.skip(
            "no Chromium found (apt-get install chromium, or set LVSEG_TEST_CHROMIUM to a Chrome/Chromium binary)"
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("gradio", reason='the web demo needs Gradio: pip install "lvseg[app]"')
    env = pytest.MonkeyPatch()  # undone after the module: later test modules must see the environment unchanged
    if "LVSEG_MSDA_BACKEND" not in os.environ:
        env.setenv("LVSEG_MSDA_BACKEND", "reference")
    from lvseg.app import find_models, launch, stop_runs

    root = tmp_path_factory.mktemp("app")
    # a second model to compare: a copy of the bundled folder (offered by its path, as `lvseg app -m FOLDER`)
    copy = root / "tiny-copy"
    shutil.copytree(find_models([DEFAULT_MODEL])[0].folder, copy)
    port = _free_port()
    demo = launch([DEFAULT_MODEL, str(copy)], host="127.0.0.1", port=port, block=False, workdir=root / "work")
    yield f"http://127.0.0.1:{port}/", copy, root / "work", demo
    try:
        assert stop_runs(demo), "a run was still in the model 60 s after it was cancelled"
    finally:
        env.undo()
    demo.close()


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright")
    executable = _chromium()
    with playwright_api.sync_playwright() as p:
        # an installed Chromium that does not start is a failure, not a skip
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A generated Shapes video (not one of the page's examples) and two expressions about two of its objects."""
    from lvseg.app import make_examples

    example = make_examples(tmp_path_factory.mktemp("video"), seeds=(5,), frames=12, size=128)[0]
    return example.path, list(example.texts)


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None)
    page.goto(url)
    page.wait_for_selector("#lvseg-run")
    return page, outside


def _run_and_wait(page, expect=r"Segmented|Error|Cancelled"):
    page.click("#lvseg-run")
    page.wait_for_function(
        f"() => /{expect}/.test((document.querySelector('#lvseg-status') || {{}}).innerText || '')",
        timeout=TIMEOUT_MS,
    )
    return page.inner_text("#lvseg-status")


def _download(page, selector):
    link = page.wait_for_selector(selector, state="attached", timeout=TIMEOUT_MS)
    response = page.request.get(link.get_attribute("href") or link.get_attribute("src"))
    assert response.ok, response.status
    return response.body()


def test_upload_two_expressions_run_and_download_what_model_predict_gives(server, browser, video, tmp_path):
    import av
    from PIL import Image

    import lvseg

    url, _, _, _ = server
    path, texts = video
    page, outside = _open(browser, url)
    page.set_input_files("#lvseg-upload input[type=file]", str(path))
    page.wait_for_selector("#lvseg-upload a", timeout=TIMEOUT_MS)  # the upload is done
    page.fill("#lvseg-texts textarea", "\n".join(texts))
    status = _run_and_wait(page)
    assert "Segmented 2 expression(s) in 12 frames" in status, status
    for text in texts:
        assert text in page.inner_text("#lvseg-legend")

    overlay = tmp_path / "overlay.mp4"
    overlay.write_bytes(_download(page, "#lvseg-overlay-1 video"))
    with av.open(str(overlay)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape == (128, 128, 3)

    expected = lvseg.load(DEFAULT_MODEL, device="cpu").predict(str(path), texts, progress=False)
    archive = zipfile.ZipFile(io.BytesIO(_download(page, "#lvseg-zip a")))
    for i, result in enumerate(expected):
        names = sorted(n for n in archive.namelist() if n.startswith(f"{DEFAULT_MODEL}/expression_{i}/"))
        assert len(names) == 12
        masks = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n)))) == 1 for n in names])
        np.testing.assert_array_equal(masks, result.to_numpy())
    assert any(r.to_numpy().any() for r in expected), "the bundled model finds the objects"
    assert not outside, f"the page asked for resources outside the app (it must work offline): {outside[:5]}"

    screenshot = os.environ.get("LVSEG_APP_SCREENSHOT")
    if screenshot:  # docs/app.md's picture: a 256-colour palette keeps the PNG small
        image = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
        image.quantize(colors=256).save(screenshot, optimize=True)
    page.close()


def test_an_image_upload_shows_a_still_overlay(server, browser, video, tmp_path):
    from PIL import Image

    import lvseg

    url, _, _, _ = server
    path, texts = video
    with __import__("av").open(str(path)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    image = tmp_path / "still.png"
    Image.fromarray(frame).save(image)
    page, _ = _open(browser, url)
    page.set_input_files("#lvseg-upload input[type=file]", str(image))
    page.wait_for_selector("#lvseg-upload a", timeout=TIMEOUT_MS)
    page.fill("#lvseg-texts textarea", "\n".join(texts))
    status = _run_and_wait(page)
    assert "Segmented 2 expression(s) in 1 frames" in status, status
    still = np.asarray(Image.open(io.BytesIO(_download(page, "#lvseg-still-1 img"))).convert("RGB"))
    assert still.shape == (128, 128, 3)
    assert page.locator("#lvseg-overlay-1 video").count() == 0  # no video player for an image
    expected = lvseg.load(DEFAULT_MODEL, device="cpu").predict(str(image), texts, progress=False)
    archive = zipfile.ZipFile(io.BytesIO(_download(page, "#lvseg-zip a")))
    for i, result in enumerate(expected):
        (name,) = [n for n in archive.namelist() if n.startswith(f"{DEFAULT_MODEL}/expression_{i}/")]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(archive.read(name)))) == 1, result.to_numpy()[0])
    page.close()


def test_a_broken_upload_shows_the_error_in_the_page(server, browser, video, tmp_path):
    url, _, _, _ = server
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00 this is not a video " * 200)
    page, _ = _open(browser, url)
    page.set_input_files("#lvseg-upload input[type=file]", str(broken))
    page.wait_for_selector("#lvseg-upload a", timeout=TIMEOUT_MS)
    page.fill("#lvseg-texts textarea", "the red circle")
    status = _run_and_wait(page)
    assert "Error:" in status and "broken.mp4 is not a video that FFmpeg can read" in status, status
    assert "Traceback" not in page.inner_text("body")
    # and no expression at all, with a valid video
    page.locator("#lvseg-upload button[aria-label='Clear']").click()
    page.set_input_files("#lvseg-upload input[type=file]", str(video[0]))
    page.wait_for_selector("#lvseg-upload a", timeout=TIMEOUT_MS)
    page.fill("#lvseg-texts textarea", "  \n ")
    status = _run_and_wait(page, expect="no expression given")
    assert "Error: no expression given" in status
    page.close()


def test_two_models_show_two_overlays_and_their_agreement(server, browser, video, tmp_path):
    url, copy, _, _ = server
    path, texts = video
    page, _ = _open(browser, url)
    page.set_input_files("#lvseg-upload input[type=file]", str(path))
    page.wait_for_selector("#lvseg-upload a", timeout=TIMEOUT_MS)
    page.fill("#lvseg-texts textarea", "\n".join(texts))
    page.click("#lvseg-models input")
    page.get_by_role("option", name=str(copy)).click()
    status = _run_and_wait(page)
    assert f"with `{DEFAULT_MODEL}` and `{copy}`".replace("`", "") in status.replace("`", ""), status
    assert "mean IoU of the two" in status and "1.000" in status  # the same weights agree everywhere
    for k in (1, 2):
        assert page.locator(f"#lvseg-overlay-{k} video").count() == 1
    assert page.locator("#lvseg-iou img").count() == 1
    page.close()


def test_progress_shows_and_stop_cancels_a_long_run(server, browser, video, tmp_path):
    """A 150-frame video runs long enough to see the progress of the Predictor's windows and to stop it; the run
    writes no outputs after Stop, and the page runs the next request."""
    from lvseg.app import make_examples

    example = make_examples(tmp_path, seeds=(7,), frames=150, size=96)[0]
    url, _, workdir, demo = server
    page, _ = _open(browser, url)
    page.set_input_files("#lvseg-upload input[type=file]", str(example.path))
    page.wait_for_selector("#lvseg-upload a", timeout=TIMEOUT_MS)
    page.fill("#lvseg-texts textarea", "\n".join(example.texts))
    page.click("#lvseg-run")
    # the stage the app reports, then the Predictor's own tqdm bar ("segmenting", frames done / 150)
    page.wait_for_function(
        "() => /segmenting/.test(document.querySelector('#lvseg-status').innerText)", timeout=TIMEOUT_MS
    )
    page.click("#lvseg-stop")
    page.wait_for_function(
        "() => /Cancelled/.test(document.querySelector('#lvseg-status').innerText)", timeout=TIMEOUT_MS
    )
    # Gradio answers Stop at once; the run's thread stops at its next frame, without writing any output
    assert demo.lvseg_jobs.wait_idle(60), "the cancelled run did not stop within 60 s"
    runs = sorted(workdir.glob("run*"))
    assert runs and not (runs[-1] / "masks_png.zip").exists() and not list(runs[-1].glob("overlay*"))
    # the page works on: the next run finishes
    page.locator("#lvseg-upload button[aria-label='Clear']").click()
    page.set_input_files("#lvseg-upload input[type=file]", str(video[0]))
    page.wait_for_selector("#lvseg-upload a", timeout=TIMEOUT_MS)
    page.fill("#lvseg-texts textarea", video[1][0])
    status = _run_and_wait(page, expect="Segmented")
    assert "Segmented 1 expression(s) in 12 frames" in status
    page.close()


def test_a_generated_example_runs_offline_on_the_bundled_model(server, browser):
    url, _, _, _ = server
    page, _ = _open(browser, url)
    page.get_by_text("shapes_seed0.mp4").first.click()  # the first row of the examples table
    page.wait_for_selector("#lvseg-upload a", timeout=TIMEOUT_MS)
    assert page.input_value("#lvseg-texts textarea") == "the blue star\nthe green star"
    status = _run_and_wait(page)
    assert "Segmented 2 expression(s) in 16 frames" in status, status
    page.close()
