"""The committed study records still match the study configs, so a fresh checkout resumes.

Each record under docs/study/<kind>/ carries the config hash of the run it records; a
config change (e.g. retuning the demo configs the studies start from) that altered a hash
would silently make the next study invocation redo that run. Builds the configs only:
nothing is trained.
"""
import glob
import json
import os

import pytest

from configs import study_indoor
from configs import study_outdoor
from experiments import study as study_cli
from pointins_jax.study import execution
from pointins_jax.study import planning

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", [study_indoor, study_outdoor], ids=["indoor", "outdoor"])
def test_committed_records_match_the_current_configs(module, tmp_path):
  study = module.get_config("small")
  paths = sorted(glob.glob(os.path.join(_ROOT, study.records_dir, "*.json")))
  if not paths:
    pytest.skip(f"no committed records under {study.records_dir}")
  _, pretrain, probe, ceiling, detection = study_cli.make_runner(study, str(tmp_path))
  plan = planning.make_plan(study, pretrain, probe.task)
  fingerprint = execution.make_fingerprint(study, pretrain, probe, ceiling, detection)
  runs = {run.name: run for run in plan.runs}
  for path in paths:
    with open(path) as f:
      record = json.load(f)
    name = os.path.basename(path)[:-len(".json")]
    assert name in runs, f"{path}: no run of that name in the study's plan"
    assert record["config_hash"] == fingerprint(runs[name]), (
        f"{path} was made under another config than configs/study_{study.kind}.py now "
        "gives: the next study invocation would redo it.")
