# TEST-ONLY stand-in for the official base image lmsysorg/sglang:v0.5.17, which no registry reachable from CI
# serves. Built by tests/docker_support.py FROM a Debian bookworm image made locally with debootstrap, with what
# prism-sglang's Dockerfile relies on: a `python3` (first on PATH) in which sglang 0.5.17 imports, CPU torch,
# sglang's light dependencies as `make install` has them (torchvision: tests/stubs), and no GNU `patch` (so the product Dockerfile's
# install-it branch runs). The build context holds the torch CPU wheel (pip cannot pick it from a registry: there
# `torch` is a CUDA build of several GB) and the host's local CA certificates: this network inspects TLS, and
# pip inside the build must trust it. Both stay in this test image, never in the product Dockerfile.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && if command -v patch >/dev/null; then echo "stand-in must not have GNU patch" >&2; exit 1; fi
COPY local-ca/ /usr/local/share/ca-certificates/
# The official image's sglang lives in a Python on PATH: here a venv, so that pip installs without fighting
# Debian's externally-managed system Python.
RUN update-ca-certificates && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY wheels/ /tmp/wheels/
RUN pip install /tmp/wheels/torch-*.whl && rm -rf /tmp/wheels
# The official image has a real torchvision; PyPI's needs CUDA torch, so the import-only stub of tests/stubs.
COPY torchvision/ /opt/venv/lib/python3.11/site-packages/torchvision/
COPY constraints.txt sglang-cpu.txt /tmp/requirements/
# Versions: constraints.txt and the pins in the commands, as `make install` has them. numba: a dependency of
# sglang 0.5.17 (its pin is in constraints.txt), so the official image has it.
# hadolint ignore=DL3013
RUN pip install -c /tmp/requirements/constraints.txt transformers tokenizers safetensors numpy numba sentencepiece \
    && pip install --no-deps sglang==0.5.17 triton==3.6.0 compressed-tensors xgrammar==0.2.1 \
    && pip install -c /tmp/requirements/constraints.txt -r /tmp/requirements/sglang-cpu.txt \
    && python3 -c "import sglang; assert sglang.__version__ == '0.5.17', sglang.__version__"
