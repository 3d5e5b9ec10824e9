#!/usr/bin/env bash
# The GPU machine's command (docs/gpus.md; `make gpu-rehearsal` runs it here the same way). That machine
# has no package index: the wheels of `make gpu-wheels` travel in build/wheels and install into a folder
# of their own. --no-deps because --target ignores what is installed: without it pip looks for numpy
# among the carried wheels, finds none, and installs nothing. Then benchmarks/gpu_check.py, which
# writes $OUT/gpu-check.json after every part.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/raw2rgb-site}
WHEELS=${GPU_WHEELS:-build/wheels}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || { echo "gpu_device: installing $WHEELS failed" >&2; exit 1; }
else
    echo "gpu_device: no wheels in $WHEELS (make gpu-wheels); going on with what is installed" >&2
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# shellcheck disable=SC2086  # GPU_PYFLAGS: interpreter flags (-S in the rehearsal), word-split on purpose
exec "$PY" ${GPU_PYFLAGS:-} benchmarks/gpu_check.py "$@"
