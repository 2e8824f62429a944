"""Import every module of the installed tao_finetune package and run the CLI's --help: the lowest-versions check's probe.

Run by .ci/lowest-deps.sh inside a venv whose dependencies sit at their declared floors; exits non-zero naming each
module that fails to import (an ImportError there means a floor in pyproject.toml is too low).
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import tao_finetune

failed = []
names = []
for info in pkgutil.walk_packages(tao_finetune.__path__, "tao_finetune."):
    if info.name.endswith(".__main__") or info.name.startswith(("tao_finetune.references.scaffolds", "tao_finetune.tests", "tao_finetune.evals.bench", "tao_finetune.evals.peer")):
        continue
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except Exception as err:  # noqa: BLE001 - report every failure, not the first
        failed.append(f"{info.name}: {type(err).__name__}: {err}")
for cmd in (["--help"], ["run", "--help"], ["doctor", "--help"], ["inspect", "--help"]):
    r = subprocess.run([sys.executable, "-m", "tao_finetune.agent.cli", *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        failed.append(f"tao-finetune {' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip().splitlines()[-1:] }")
print(f"imported {len(names) - sum(1 for f in failed if not f.startswith('tao-finetune'))}/{len(names)} modules")
if failed:
    print("\n".join(failed))
    sys.exit(1)
