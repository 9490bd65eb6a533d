"""Fuzz every operation of the server's own OpenAPI schema with schemathesis: no input may cause a 5xx.

The server gets a 48-token context, so that every request the fuzzer makes valid generates only a few tokens
(and the run stays bounded); requests beyond it must be refused with a 400, which is part of what is checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve_support import make_fast_draft, make_fast_target, running_server

MAX_EXAMPLES = 20  # per operation and phase


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    target = make_fast_target(tmp_path_factory.mktemp("fast-target"))
    draft = make_fast_draft(target, tmp_path_factory.mktemp("fast-draft"))
    args = ["--target", str(target), "--draft", str(draft), "--context-length", "48", "--num-steps", "2"]
    with running_server(args, tmp_path_factory.mktemp("logs") / "server.log") as s:
        yield s


def test_schemathesis_finds_no_server_error(server, tmp_path):
    schemathesis = Path(sys.executable).with_name("schemathesis")
    if not schemathesis.exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    cmd = [str(schemathesis), "run", server.url + "/openapi.json", "--checks", "not_a_server_error",
           "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic", "--request-timeout", "120",
           "--suppress-health-check", "all", "--no-color"]
    # cwd: schemathesis keeps its example database in the working directory.
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Traceback" not in server.output(), server.output()[-6000:]
