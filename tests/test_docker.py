"""The real Dockerfile, built and run: on a locally made stand-in for lmsysorg/sglang:v0.5.17 (no registry is
reachable here; tests/docker_support.py), then `docker run` as a user would: --help, the install verification as
the image's non-root user, the HEALTHCHECK against a down and an up server, a mounted Hugging Face cache, and the
image's own entry point starting the real SGLang server on CPU with PRISM (test kernels layered on a test image,
never in the product image). Without a Docker engine these tests fail, saying why."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from bench.common import free_port
from bench.launch import SGLANG_CPU_FLAGS
from prism_sglang.prepare_model import prepare_smollm2
from prism_sglang.resources import cache_dir
from tests.docker_support import REPO, DockerEngine, DockerUnavailable, sglang_stand_in

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]

IMAGE = "prism-sglang:ci"
PRISM_UID = 1000


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerEngine]:
    engine = DockerEngine(cache_dir() / "docker", Path(tempfile.mkdtemp(prefix="pdk-", dir="/tmp")))
    try:
        engine.start()
    except DockerUnavailable as e:
        pytest.fail(f"no Docker engine, so the image cannot be tested: {e}", pytrace=False)
    yield engine
    engine.stop()
    shutil.rmtree(engine.run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def image(engine) -> str:
    """The product image, from the unchanged Dockerfile (a rebuild reuses docker's layer cache)."""
    engine.build(REPO, IMAGE, SGLANG_IMAGE=sglang_stand_in(engine))
    engine.docker("image", "prune", "-f", check=False)  # the previous build's image, now untagged
    return IMAGE


def run(engine: DockerEngine, *args: str, timeout: float = 600.0) -> tuple[int, str]:
    result = engine.docker("run", "--rm", *args, check=False, timeout=timeout)
    return result.returncode, result.stdout + result.stderr


def test_help(engine, image):
    code, out = run(engine, image, "--help")
    assert code == 0, out
    assert "Usage: serve.sh" in out and "--draft-path" in out


def test_the_plugin_and_patches_check_out_as_the_non_root_user(engine, image):
    script = ("id -u && prism-sglang patch-sglang --check && python3 -m prism_sglang.sglang.install_check verify "
              "&& test ! -w \"$(python3 -c 'import sglang, os; print(os.path.dirname(sglang.__file__))')\"")
    code, out = run(engine, image, "bash", "-c", script)
    assert code == 0, out
    assert out.splitlines()[0].strip() == str(PRISM_UID)


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def health_server(port: int) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_fails_against_a_down_server_and_passes_against_an_up_one(engine, image):
    check = json.loads(engine.docker("inspect", "--format", "{{json .Config.Healthcheck.Test}}", image).stdout)
    assert check[0] == "CMD"
    port = free_port()
    probe = ("--network", "host", "-e", f"PORT={port}", "--entrypoint", check[1], image, *check[2:])
    code, _ = run(engine, *probe, timeout=120)
    assert code != 0  # nothing listens on the port
    with health_server(port):
        code, out = run(engine, *probe, timeout=120)
    assert code == 0, out


def test_a_mounted_hf_cache_is_writable_by_the_server_user(engine, image, tmp_path):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    os.chown(cache, PRISM_UID, PRISM_UID)  # what the README tells users: a cache owned by PRISM_UID
    code, out = run(engine, "-v", f"{cache}:/home/prism/.cache/huggingface", image, "bash", "-c",
                    'mkdir -p "$HF_HOME/hub" && echo ok > "$HF_HOME/hub/written-in-container"')
    assert code == 0, out
    written = cache / "hub" / "written-in-container"
    assert written.read_text().strip() == "ok" and written.stat().st_uid == PRISM_UID


@pytest.fixture(scope="module")
def test_image(engine, image) -> str:
    """The product image plus the SGLang-on-CPU test kit (tests/sglang_cpu, tests/stubs)."""
    with tempfile.TemporaryDirectory(prefix="sglang-cpu-layer-") as tmp:
        context = Path(tmp)
        shutil.copytree(REPO / "tests" / "sglang_cpu" / "site", context / "sglang_cpu" / "site",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "tests" / "stubs", context / "stubs", ignore=shutil.ignore_patterns("__pycache__"))
        tag = f"{image}-sglang-cpu-test"
        engine.build(context, tag, REPO / "tests" / "docker" / "sglang-cpu-test.Dockerfile", PRODUCT_IMAGE=image)
    return tag


def test_the_image_serves_prism_with_the_real_sglang_server_on_cpu(engine, test_image):
    model = prepare_smollm2(log=lambda _: None)
    port, name = free_port(), f"prism-cpu-{os.getpid()}"
    engine.docker("run", "-d", "--name", name, "--network", "host", "-v", f"{model}:/models/smollm2:ro",
                  "-e", "HOST=127.0.0.1", "-e", f"PORT={port}", "-e", "TOPK=1", "-e", "NUM_STEPS=3", test_image,
                  "--model-path", "/models/smollm2", *SGLANG_CPU_FLAGS, timeout=120)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            running = engine.docker("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
            logs = engine.docker("logs", name, check=False)
            assert running == "true", (logs.stdout + logs.stderr)[-4000:]
            time.sleep(1)
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        reply = client.chat.completions.create(model="default", max_tokens=16, temperature=0,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in reply.choices[0].message.content
        info = httpx.get(url + "/server_info", timeout=30).json()
        assert info["speculative_algorithm"] == "PRISM"
        assert info["speculative_draft_model_path"].endswith("smollm2-prism")  # the draft shipped in the image
    finally:
        engine.docker("rm", "-f", name, check=False, timeout=120)
