"""A test-time rule is its registry entry (`jobs/mtgan/settings.py`, RULES): what it sends to D
(its routing, whether it reads `infer.g_max_side`, which variants it applies to) is there, and no
other module names a rule. A rule added there alone is validated, named, routed, planned by the
workflow and drawn, with nothing else edited."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from jobs.mtgan.settings import RULES

from conftest import REPO, TINY_CONFIG

REGISTRY = REPO / "jobs" / "mtgan" / "settings.py"


def test_no_rule_name_is_written_outside_the_registry() -> None:
    names = set(RULES)
    found = []
    for path in sorted(REPO.glob("**/*.py")):
        if {".venv", "tests", "build"} & set(path.relative_to(REPO).parts) or path == REGISTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            # a rule's name, or a method or metric name built with it (`mtgan-by_size_ensemble`, `eval_acc_pos-by_size`)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and names & set(node.value.removesuffix("_ensemble").split("-")):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    for path in [REPO / "Snakefile", *sorted((REPO / "pipeline" / "rules").glob("*.smk"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.relative_to(REPO)}:{number}: {name}" for name in names if re.search(rf"[\"'-]{name}[\"']", line)]
    assert found == [], "rule names outside jobs/mtgan/settings.py: " + "; ".join(found)


ADD_A_RULE = """
import sys
import jobs.mtgan.settings as settings

# the new rule: one registry entry, nothing else
settings.RULES["g_for_all"] = settings.TestTimeRule("G for every ROI (a test's rule)", "G(LR) for every ROI", settings.UP_SAMPLED, every_variant=False)

import numpy as np
from jobs.mtgan.roi_input import through_generator
from pipeline.config import load_config_files, validate_config
from pipeline.methods import display_name, method_color
from pipeline.report.figures import TRAINING_PANELS
from pipeline.workflow import infer_sections, inferences, methods

config = load_config_files([sys.argv[1], sys.argv[2]])
config["infer"]["rules"] = ["paper", "g_for_all"]
config = validate_config(config)
print("methods", methods(config))
print("inferences", inferences(config))
print("label", display_name("mtgan-g_for_all"), method_color("mtgan-g_for_all"))
print("sections", infer_sections(config, "g_for_all"))
boxes, sizes = np.array([[0, 0, 8, 8], [0, 0, 90, 90]], float), np.array([[100, 100], [100, 100]])
print("routing", through_generator(boxes, sizes, 0.0, "g_for_all", 16.0, settings.VARIANTS["mtgan"]).tolist())
print("panels", [title for title, _ in TRAINING_PANELS if "a test's rule" in title])

from snakemake.cli import main

rules = 'infer={"rules": ["paper", "g_for_all"]}'
sys.argv = ["snakemake", "-s", sys.argv[3], "-n", "--cores", "2", "eval_coco", "--configfile", sys.argv[2], "--config", rules]
main()
"""


def test_a_new_rule_is_one_registry_entry(tmp_path: Path) -> None:
    script = tmp_path / "add_rule.py"
    script.write_text(ADD_A_RULE)
    command = [sys.executable, str(script), str(REPO / "config" / "default.yaml"), str(TINY_CONFIG), str(REPO / "Snakefile")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "'mtgan-g_for_all'" in out and "'mtgan-g_for_all_ensemble'" in out and "sbu-g_for_all" not in out  # applies to MTGAN only
    assert "('mtgan', 'g_for_all')" in out
    assert "label MTGAN: G for every ROI (a test's rule)" in out
    assert '"g_max_side"' not in out.split("sections ", 1)[1].splitlines()[0]  # its routing does not read the threshold
    assert "routing [True, True]" in out and "D eval-mode accuracy on held-out ROIs, G for every ROI (a test's rule)" in out.split("panels ", 1)[1]
    assert "artifacts/tiny/infer/g_for_all/mtgan.parquet" in out and "artifacts/tiny/merge/mtgan-g_for_all.json" in out  # planned by the workflow
