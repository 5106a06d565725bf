"""Collect notebook 08's Table 1 (selective copying) from the twelve checkpoints that
scripts/train_selective_copying.sh trains, into checkpoints/table1_selective_copying.json:

    python scripts/table1.py            (from the repository root, after the training script)

Per row: the accuracy of each seed (its eval.json: 128 seeded examples, 512 copied tokens), their mean,
sample standard deviation and range, the paper's number (Gu & Dao 2023, Table 1), and each run's
training time (train_log.json's seconds; CPU seconds from runs/table1/<name>.log when that log exists).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
SEEDS = (0, 1, 2)
# row: (the paper's architecture column, its inner layer, its accuracy in %)
ROWS = {"sc_lti_nogate": ("No gate", "S4", 18.3), "sc_s6_nogate": ("No gate", "S6", 97.0),
        "sc_lti_gated": ("Mamba", "S4", 56.4), "sc_mamba": ("Mamba", "S6", 99.8)}


def collect(checkpoints: Path = CHECKPOINTS, logs: Path = ROOT / "runs" / "table1") -> dict:
    rows = {}
    for row, (arch, layer, paper) in ROWS.items():
        runs = []
        for seed in SEEDS:
            directory = checkpoints / f"{row}_seed{seed}"
            if not (directory / "eval.json").is_file():
                continue
            log = json.loads((directory / "train_log.json").read_text())
            run = {"seed": seed, "accuracy": json.loads((directory / "eval.json").read_text())["accuracy"],
                   "steps": log["args"]["steps"], "seconds": log["seconds"],
                   "command": (directory / "COMMAND.txt").read_text().strip()}
            time_log = logs / f"{directory.name}.log"
            found = re.search(r"cpu_user_s=([\d.]+) cpu_system_s=([\d.]+) wall_s=([\d.]+)",
                              time_log.read_text()) if time_log.is_file() else None
            if found:
                run["cpu_user_s"], run["cpu_system_s"], run["wall_s"] = map(float, found.groups())
            runs.append(run)
        acc = [100 * r["accuracy"] for r in runs]
        rows[row] = {"architecture": arch, "layer": layer, "paper_percent": paper, "runs": runs,
                     "mean_percent": round(statistics.mean(acc), 2) if acc else None,
                     "std_percent": round(statistics.stdev(acc), 2) if len(acc) > 1 else None,
                     "min_percent": round(min(acc), 2) if acc else None,
                     "max_percent": round(max(acc), 2) if acc else None}
    return {"command": "python scripts/table1.py",
            "training": "scripts/train_selective_copying.sh (each run's command is under runs[].command)",
            "machine": "a 2-core x86-64 CPU (AVX2) shared with other jobs; one thread per run, two runs at a time",
            "rows": rows}


if __name__ == "__main__":
    table = collect()
    out = CHECKPOINTS / "table1_selective_copying.json"
    out.write_text(json.dumps(table, indent=1) + "\n")
    for row, r in table["rows"].items():
        print(f"{row:15s} {len(r['runs'])} seeds: {r['mean_percent']} ± {r['std_percent']} % "
              f"(range {r['min_percent']}–{r['max_percent']}), paper {r['paper_percent']} %", file=sys.stderr)
