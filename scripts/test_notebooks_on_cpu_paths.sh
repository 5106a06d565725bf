#!/usr/bin/env bash
# Re-execute the notebooks under nbval on the CPU vector paths other machines take (DESIGN.md):
# PyTorch's AVX2 kernels and its plain (non-vectorised) ones, whatever this CPU has (AVX-512 or not).
# A printed number that depends on the vector path fails here; `.ci/run` runs this after the
# suite (which covers the machine's own path).
#
#   scripts/test_notebooks_on_cpu_paths.sh                               # every notebook
#   scripts/test_notebooks_on_cpu_paths.sh notebooks/04_selection.ipynb   # some
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then set -- notebooks/; fi
for capability in avx2 default; do
  echo "== ATEN_CPU_CAPABILITY=$capability pytest --nbval $*"
  ATEN_CPU_CAPABILITY="$capability" python -m pytest --nbval -q "$@"
done
