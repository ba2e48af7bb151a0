"""docs/config_reference.md lists every field of the main configs."""
import os
import re

import ml_collections

from configs import pointins_indoor
from configs import pointins_outdoor
from configs import probe_indoor

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "config_reference.md")


def _fields(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and key != "magnitude_prior":
      yield from _fields(value, prefix + key + ".")
    else:
      yield prefix + key


def test_every_field_is_documented():
  with open(DOC, encoding="utf-8") as f:
    documented = set(re.findall(r"^\| `([a-z0-9_.]+)` \|", f.read(), flags=re.M))
  configs = (pointins_indoor.get_config("scannet"), pointins_outdoor.get_config("nuscenes"),
             probe_indoor.get_config("linear_insseg"))
  missing = sorted({f for c in configs for f in _fields(c)}
                   - {d.rsplit(".", 1)[0] if d.startswith("offset.magnitude_prior.") else d
                      for d in documented})
  assert not missing, f"add these fields to docs/config_reference.md: {missing}"
