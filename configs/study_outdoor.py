"""The paper's comparison tables on synthetic-outdoor data (`python -m experiments.study`).

`--config configs/study_outdoor.py:VARIANT`, VARIANT small (default) or tiny; see
configs/study_common.py for the fields and arguments.
"""
from configs import study_common


def get_config(arg=None):
  return study_common.study_config("outdoor", arg)
