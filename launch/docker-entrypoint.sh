#!/usr/bin/env bash
# Entry point of the prism-sglang Docker image. With no arguments, or arguments that start with '-', it starts
# the server: serve.sh with those arguments (see serve.sh --help). Anything else is run as a command, e.g.
#   docker run --rm IMAGE prism-sglang patch-sglang --check
#   docker run --rm -it IMAGE bash
set -euo pipefail

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    exec "$(dirname "${BASH_SOURCE[0]}")/serve.sh" "$@"
fi
exec "$@"
