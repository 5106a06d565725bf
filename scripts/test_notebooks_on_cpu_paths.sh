#!/usr/bin/env bash
# Re-execute the notebooks under nbval on the CPU vector paths other machines take (DESIGN.md):
# PyTorch's AVX2 kernels and its plain (non-vectorised) ones, whatever this CPU has (AVX-512 or not).
# A printed number that depends on the vector path fails here.
#
#   scripts/test_notebooks_on_cpu_paths.sh                               # every notebook
#   scripts/test_notebooks_on_cpu_paths.sh notebooks/04_selection.ipynb   # some
#   scripts/test_notebooks_on_cpu_paths.sh --skip-native                 # not the path this CPU takes anyway
#
# `.ci/run` passes --skip-native: its `pytest --nbval` has just run the notebooks on this CPU's own
# path, so on an AVX2 machine only the plain path is left to run (on an AVX-512 machine, both).
set -euo pipefail
cd "$(dirname "$0")/.."
native=""
if [ "${1:-}" = "--skip-native" ]; then
  native=$(python -c "import torch; print(torch.backends.cpu.get_cpu_capability().lower())")
  shift
fi
if [ "$#" -eq 0 ]; then set -- notebooks/; fi
for capability in avx2 default; do
  if [ "$capability" = "$native" ]; then
    echo "== ATEN_CPU_CAPABILITY=$capability: skipped, the suite ran the notebooks on this CPU's own path ($native)"
    continue
  fi
  echo "== ATEN_CPU_CAPABILITY=$capability pytest --nbval $*"
  ATEN_CPU_CAPABILITY="$capability" python -m pytest --nbval -q "$@"
done
