#!/usr/bin/env bash
# Re-execute notebooks in place, the way their committed outputs are made:
#   scripts/execute_notebooks.sh                          # every notebook
#   scripts/execute_notebooks.sh notebooks/04_selection.ipynb
# Same environment as `pytest --nbval` (see conftest.py): seeded hashes, no display, no network,
# the Triton interpreter when there is no CUDA GPU. Widget state is stored in the notebook, so
# JupyterLab (in a trusted notebook) and the book show the controls without re-running the cell;
# then scripts/normalize_notebooks.py makes the notebook open in JupyterLab without "unsaved changes".
# Then check the result on other vector paths too (DESIGN.md):
#   ATEN_CPU_CAPABILITY=default pytest --nbval <notebook>;  ATEN_CPU_CAPABILITY=avx2 pytest --nbval <notebook>
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONHASHSEED=0 MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || export TRITON_INTERPRET=1
if [ "$#" -eq 0 ]; then set -- notebooks/[0-9][0-9]_*.ipynb; fi
for nb in "$@"; do
  echo "== $nb"
  python -m nbconvert --to notebook --execute --inplace \
    --ExecutePreprocessor.timeout=1800 --ExecutePreprocessor.store_widget_state=True "$nb"
  python scripts/normalize_notebooks.py "$nb"
done
