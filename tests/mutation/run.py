"""Mutation testing of loom's core logic with mutmut 3, one module at a time.

Why a staging tree: loom's folders install as `loom.schemas`, `loom.jobs`, ... through a
package-dir mapping, while mutmut names each mutant from its file path and only switches
mutants on when the running module's `__module__` matches that name. So each module runs in
`.mutation/<name>/`, a copy laid out as `src/loom/<package>/` (plus `tests/`): the file path
and the import name agree, and mutmut's `mutants/src` shadows the editable install (the path
finder runs before setuptools' editable finder).

Each module is tested only by the tests that exercise it (fast, no Ray). Usage:

    python -m tests.mutation.run                # every module
    python -m tests.mutation.run mining splits  # some
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / ".mutation"
# mutmut's parallel test runs; MUTATION_CHILDREN=1 when two modules run side by side
CHILDREN = os.environ.get("MUTATION_CHILDREN", "2")
PACKAGES = ("schemas", "transforms", "synth", "models", "pipelines", "jobs")

# name -> (the file mutated, the tests that exercise it (pytest arguments), the functions
# mutated: mutmut's mutant-name globs, or none for the whole file)
MODULES: dict[str, tuple[str, list[str], list[str]]] = {
    # the rules that drop a candidate, the quotas, the asset groups, the round-robin list
    # (not `mine`'s plumbing or `select`'s bookkeeping: too slow for one session here)
    "mining": ("transforms/mining.py", ["tests/transforms/test_mining.py"],
               ["loom.transforms.mining.xǁ_Ctxǁ_rules__mutmut_*",
                "loom.transforms.mining.xǁMiningConfigǁ_check__mutmut_*",
                "loom.transforms.mining.xǁMiningConfigǁquotas__mutmut_*",
                "loom.transforms.mining.x__asset_groups__mutmut_*",
                "loom.transforms.mining.x__round_robin__mutmut_*"]),
    "sniff": ("transforms/sniff.py", ["tests/transforms/test_sniff.py"], []),
    "splits": ("schemas/splits.py", ["tests/schemas/test_splits.py"], []),
    # (not the across-processes test: its subprocess imports the tree's own `schemas`)
    "manifest": ("schemas/manifest.py", ["tests/schemas/test_manifest.py", "-k",
                                         "not across_processes"], []),
    "losses": ("models/losses.py", ["tests/models/test_losses.py"], []),
    # the gc planner: what gc reads, what depends on what, and the plan (not ls / inspect)
    "gc": ("jobs/ops.py", ["tests/jobs/test_ops.py", "-k", "not cli and not log_json and not gcs"],
           [f"loom.jobs.ops.x_{f}__mutmut_*" for f in
            ("scan", "_strings", "_refers", "dependencies", "gc_plan")]),
    "budget": ("synth/budget.py", ["tests/synth/test_budget_ledger.py"], []),
    # the retry policy: what is retried, how long to wait, how many tries
    "retry": ("synth/client.py", ["tests/synth/test_retry_policy.py"],
              ["loom.synth.client.x_retry_after__mutmut_*", "loom.synth.client.x_classify__mutmut_*",
               "loom.synth.client.x_call_with_retry__mutmut_*",
               "loom.synth.client.xǁ_Waitǁ__call____mutmut_*"]),
}

PYPROJECT = """\
[tool.mutmut]
source_paths = ["src/loom"]
only_mutate = ["src/loom/{target}"]
pytest_add_cli_args_test_selection = {tests}
pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-m", "not slow", "-x"]
process_isolation = "forkserver"
use_git_change_detection = false

[tool.pytest.ini_options]
markers = ["slow: long tests"]
filterwarnings = ["ignore::DeprecationWarning"]
"""


def stage(name: str) -> Path:
    """A fresh `.mutation/<name>/` with src/loom/<package>/ and tests/ copied from the tree."""
    target, tests, _ = MODULES[name]
    where = STAGE / name
    shutil.rmtree(where, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "regressions")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, where / "src" / "loom" / pkg, ignore=ignore)
    shutil.copytree(ROOT / "tests", where / "tests", ignore=ignore)
    (where / "pyproject.toml").write_text(PYPROJECT.format(target=target, tests=json.dumps(tests)))
    return where


def run(name: str) -> dict:
    """Run mutmut over one module; its counts and its survivors' names."""
    where = stage(name)
    mutmut = [sys.executable, "-m", "mutmut"]
    with open(where / "mutmut-run.log", "w") as log:
        subprocess.run([*mutmut, "run", "--max-children", CHILDREN, *MODULES[name][2]], cwd=where,
                       check=False,
                       stdout=log, stderr=subprocess.STDOUT)
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=where, check=True)
    stats = json.loads((where / "mutants" / "mutmut-cicd-stats.json").read_text())
    listed = subprocess.run([*mutmut, "results", "--all", "true"], cwd=where,
                            capture_output=True, text=True)
    survivors = [ln.split(":")[0].strip() for ln in listed.stdout.splitlines()
                 if ln.strip().endswith(": survived")]
    if MODULES[name][2]:  # counts over the selected functions only
        states = [ln.rsplit(":", 1)[1].strip() for ln in listed.stdout.splitlines() if ":" in ln]
        stats = {"killed": states.count("killed"), "survived": states.count("survived"),
                 "timeout": states.count("timeout"), "no_tests": states.count("no tests"),
                 "total": sum(s != "not checked" for s in states)}
    with open(where / "survivors.diff", "w") as out:  # for review: one diff per survivor
        for s in survivors:
            shown = subprocess.run([*mutmut, "show", s], cwd=where, capture_output=True, text=True)
            out.write(f"# {s}\n{shown.stdout}\n")
    # a timeout is a killed mutant (the tests noticed); a mutant no test ran is a survivor
    killed = stats["killed"] + stats.get("timeout", 0)
    tested = killed + stats["survived"] + stats.get("no_tests", 0)
    score = killed / tested if tested else 0.0
    return {"module": MODULES[name][0], "score": round(score, 3), **stats,
            "survivors": survivors}


def main(names: list[str]) -> int:
    results = []
    for n in names or list(MODULES):
        results.append(run(n))
        STAGE.mkdir(exist_ok=True)
        (STAGE / f"summary-{n}.json").write_text(json.dumps(results[-1], indent=2))
    for r in results:
        print(f"{r['module']:<24} killed {r['killed']:>4} / {r['total']:>4}  "
              f"score {r['score']:.1%}  survived {r['survived']}")
        for s in r["survivors"]:
            print(f"    survived: {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
