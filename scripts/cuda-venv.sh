#!/usr/bin/env bash
# Installs into .venv-cuda/ the CUDA pieces the checks without a GPU use, from PyPI, and prints
# the folder to put on LD_LIBRARY_PATH: NVRTC (pinned to CUDA 13.0, the version the GPU
# machines' driver loads; see docs/cuda.md) for the compile gate and `polylm compile-kernels`,
# and cuobjdump + nvdisasm for the SASS checks (PyPI has no 13.0 build; 13.2 reads 13.0's
# cubins). Used by .ci/run and scripts/gpu-check.sh build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-cuda/bin/python ]; then
    python3 -m venv .venv-cuda >&2
fi
.venv-cuda/bin/pip install --quiet --disable-pip-version-check --no-deps \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.2.86 >&2
echo "$(.venv-cuda/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13/lib"
