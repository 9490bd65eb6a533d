# prism-sglang: an SGLang 0.5.17 server with PRISM speculative decoding (`--speculative-algorithm PRISM`).
#
#   docker build -t prism-sglang .
#   docker run --gpus all --shm-size 16g -p 30000:30000 prism-sglang   # SmolLM2-135M + the shipped PRISM draft
#   docker run --rm prism-sglang --help                                 # serve.sh's options
# More (Llama-3.1-8B, EAGLE-3 comparison, volumes): launch/README.md.
#
# Base: the official SGLang 0.5.17 image (torch 2.11, CUDA 13); sglang is an editable install there. The tag
# for 0.5.17 is not confirmed (`v0.5.17`, or a `-cu130` variant): check it with
# `docker buildx imagetools inspect lmsysorg/sglang:v0.5.17` and pin the base by digest for reproducible builds:
#   docker build --build-arg SGLANG_IMAGE=lmsysorg/sglang@sha256:<digest> -t prism-sglang .
# Any image whose `python3` has sglang 0.5.17 will do; the build stops on any other sglang version.
ARG SGLANG_IMAGE=lmsysorg/sglang:v0.5.17

# Stage 1: the prism-sglang wheel (pure Python; the sglang patches and the shipped drafts are package data).
FROM ${SGLANG_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
RUN python3 -m pip wheel --no-deps --no-cache-dir --wheel-dir /dist .

# Stage 2: the base image, plus the wheel, sglang patched, and a non-root user.
FROM ${SGLANG_IMAGE}
# The uid the server runs as. Match yours (--build-arg PRISM_UID="$(id -u)") to keep a mounted HF cache writable.
ARG PRISM_UID=1000
# GNU patch applies the sglang patches; install it if the base lacks it (its version does not matter).
# hadolint ignore=DL3008
RUN if ! command -v patch >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends patch && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=wheel /dist/ /opt/prism/dist/
COPY constraints.txt /opt/prism/
COPY launch/ /opt/prism/launch/
# One script, which the CPU test suite runs too (tests/test_launch.py): pip install --no-deps (the image's
# torch/CUDA stack is never touched), `prism-sglang patch-sglang` (fails on a hunk that does not apply),
# `patch-sglang --check`, then the plugin import and its `sglang.srt.plugins` entry point are verified.
RUN chmod 0755 /opt/prism/launch/*.sh /opt/prism/launch/examples/*.sh \
    && PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
       /opt/prism/launch/install-into-image.sh /opt/prism/dist/prism_sglang-*.whl
# The server runs as PRISM_UID (a new user `prism`, or the base's own user with that uid), whose HOME holds
# the caches (Hugging Face, triton, flashinfer). sglang itself stays root-owned, patched, read-only.
RUN if ! getent passwd "${PRISM_UID}" >/dev/null; then \
        useradd --uid "${PRISM_UID}" --home-dir /home/prism --no-create-home --shell /bin/bash prism; \
    fi \
    && mkdir -p /home/prism/.cache/huggingface \
    && chown -R "${PRISM_UID}" /home/prism
ENV HOME=/home/prism \
    HF_HOME=/home/prism/.cache/huggingface \
    SGLANG_PLUGINS=prism \
    HOST=0.0.0.0 \
    PORT=30000
USER ${PRISM_UID}
WORKDIR /home/prism
EXPOSE 30000
# Loading the model and capturing CUDA graphs takes minutes: failures in the first 15 min do not count.
HEALTHCHECK --interval=30s --timeout=10s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '30000'), timeout=8)"]
# No arguments, or options: serve.sh (see --help); anything else runs as a command (e.g. bash).
ENTRYPOINT ["/opt/prism/launch/docker-entrypoint.sh"]
CMD []
