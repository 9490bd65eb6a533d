"""A Docker engine for the image tests (tests/test_docker.py): Debian's `docker.io` daemon, started and stopped
here by PID, and the locally made base images a build needs where no image registry is reachable.

* `DockerEngine`: dockerd with its own socket, data root (kept under the model cache, so built images are reused
  by later runs on the same machine), exec root and pid file; no iptables, no bridge: containers use the host's
  network, the only one here. The client is Debian's (`/usr/bin/docker`, 20.10, legacy builder: BuildKit would
  need buildx), whatever else is first on PATH.
* `debian_image`: `debootstrap --variant=minbase bookworm`, imported as an image.
* `sglang_stand_in`: tests/docker/sglang-stand-in.Dockerfile built on it, tagged by a hash of everything that
  goes into it, so a rerun reuses it.
Where the engine cannot start, the tests fail and say why: an image test that skips would hide a broken image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKER = Path("/usr/bin/docker")
DOCKERD = Path("/usr/sbin/dockerd")
DEBOOTSTRAP = Path("/usr/sbin/debootstrap")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
LOCAL_CA = Path("/usr/local/share/ca-certificates")
STAND_IN_DOCKERFILE = REPO / "tests" / "docker" / "sglang-stand-in.Dockerfile"
INSTALL_HINT = "apt-get install -y --no-install-recommends docker.io iptables debootstrap (`make docker-tools`)"


class DockerUnavailable(RuntimeError):
    """No Docker engine could be started here; the message says what is missing."""


@dataclass
class DockerEngine:
    root: Path  # data root: images and build cache
    run_dir: Path  # socket, pid file, exec root (short paths: unix sockets have a length limit)
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        return {**env, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}

    def start(self, timeout: float = 60.0) -> None:
        for tool in (DOCKER, DOCKERD):
            if not tool.is_file():
                raise DockerUnavailable(f"{tool} is missing: {INSTALL_HINT}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = (self.run_dir / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [str(DOCKERD), "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=overlay2",
             "--data-root", str(self.root), "--exec-root", str(self.run_dir / "exec"),
             "--pidfile", str(self.run_dir / "dockerd.pid"), "-H", f"unix://{self.socket}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DockerUnavailable(f"dockerd exited with status {self.process.returncode}:\n{self.log_tail()}")
            if self.docker("version", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.5)
        self.stop()
        raise DockerUnavailable(f"dockerd did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        path = self.run_dir / "dockerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def docker(self, *args: str, check: bool = True, timeout: float = 1800.0,
               input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(DOCKER), *args], env=self.env, capture_output=True, timeout=timeout,
                                input=input, text=input is None)
        if check and result.returncode != 0:
            out = result.stdout if isinstance(result.stdout, str) else result.stdout.decode(errors="replace")
            err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
            raise RuntimeError(f"docker {' '.join(args[:3])} ... failed ({result.returncode}):\n"
                               f"{out[-4000:]}\n{err[-4000:]}")
        return result

    def has_image(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False, timeout=60).returncode == 0

    def build(self, context: Path, tag: str, dockerfile: Path | None = None, timeout: float = 2400.0,
              **build_args: str) -> subprocess.CompletedProcess[str]:
        """`docker build --network=host` (RUN steps reach the package registries only through the host)."""
        args = ["build", "--network=host", "-t", tag]
        if dockerfile is not None:
            args += ["-f", str(dockerfile)]
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        return self.docker(*args, str(context), timeout=timeout)


def content_hash(*parts: bytes | str | Path) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.read_bytes() if isinstance(part, Path) else part.encode() if isinstance(part, str) else part
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def debian_image(engine: DockerEngine) -> str:
    """Debian bookworm (minbase), made by debootstrap and imported; built once per data root."""
    tag = "prism-test/debian:bookworm-minbase"
    if engine.has_image(tag):
        return tag
    if not DEBOOTSTRAP.is_file():
        raise DockerUnavailable(f"{DEBOOTSTRAP} is missing: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="debootstrap-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run([str(DEBOOTSTRAP), "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR], check=True,
                       capture_output=True, timeout=1200)
        archive = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], check=True, capture_output=True,
                                 timeout=600).stdout
        engine.docker("import", "-", tag, input=archive, timeout=600)
    return tag


def torch_cpu_wheel(directory: Path) -> Path:
    """The torch CPU wheel `make install` uses, through pip's own configuration (its find-links)."""
    subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pip", "download", "--no-deps", "--only-binary",
                    ":all:", "-d", str(directory), "torch==2.13.0"], check=True, capture_output=True, timeout=1800)
    (wheel,) = directory.glob("torch-*.whl")
    if "+cpu" not in wheel.name:
        raise RuntimeError(f"pip found {wheel.name}, not the CPU build of torch")
    return wheel


def sglang_stand_in(engine: DockerEngine) -> str:
    """The stand-in for lmsysorg/sglang:v0.5.17, tagged by a hash of its recipe and inputs."""
    base = debian_image(engine)
    stubs = REPO / "tests" / "stubs" / "torchvision"
    inputs = [STAND_IN_DOCKERFILE, REPO / "constraints.txt", REPO / "requirements" / "sglang-cpu.txt", base,
              *sorted(p for p in stubs.rglob("*.py")), *sorted(LOCAL_CA.rglob("*.crt"))]
    tag = f"prism-test/sglang-stand-in:{content_hash(*inputs)}"
    if engine.has_image(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="stand-in-") as tmp:
        context = Path(tmp)
        (context / "wheels").mkdir()
        torch_cpu_wheel(context / "wheels")
        shutil.copytree(LOCAL_CA, context / "local-ca") if LOCAL_CA.is_dir() else (context / "local-ca").mkdir()
        shutil.copytree(stubs, context / "torchvision", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "constraints.txt", context)
        shutil.copy(REPO / "requirements" / "sglang-cpu.txt", context)
        engine.build(context, tag, STAND_IN_DOCKERFILE, DEBIAN_IMAGE=base)
    remove_other_tags(engine, tag)
    return tag


def remove_other_tags(engine: DockerEngine, keep: str) -> None:
    """Drop the stand-ins of earlier recipes and the untagged images left behind (3 GB each): the data root
    lives on across runs, and the disk is small."""
    repository = keep.split(":")[0]
    tags = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}", repository).stdout.split()
    stale = [t for t in tags if t != keep]
    if stale:
        engine.docker("rmi", *stale, check=False)
    engine.docker("image", "prune", "-f", check=False)
