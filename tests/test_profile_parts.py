"""`benchmarks/profile_step.py` charges the offset branch's ops by their named scopes."""
import functools
import re

import jax
import numpy as np

from benchmarks import profile_step
from configs import common
from pointins_jax.pointins import offsets as offsets_lib
from pointins_jax.pointins import train as train_lib
from tests.test_scr import small_scene


def test_part_of_reads_the_scopes_under_vmap_and_autodiff():
  assert profile_step.part_of("jit(train_step)/jvp(vmap(odr))/sort") == "ODR"
  assert profile_step.part_of("jit(f)/vmap(scr_knn)/jit(_knn)/while/body/top_k") == "SCR kNN"
  assert profile_step.part_of("jit(f)/vmap(scr_kmeans)/while/body/dot_general") == "SCR K-means"
  assert profile_step.part_of("jit(f)/scr_components/while") == "SCR components"
  # A module path merely containing the letters is not ODR.
  assert profile_step.part_of("jit(f)/backbone/coordinate_order/sort") == "serialization"


def test_lowered_offset_targets_carry_every_part():
  config = common.pretrain_config("indoor")
  cfg = config.offset
  cfg.num_clusters, cfg.k_nn, cfg.tau_d, cfg.tau_min = 4, 12, 0.25, 8
  assert cfg.odr and cfg.scr
  magnitude_prior, direction_prior = train_lib.magnitude_and_direction_priors(config)
  scenes = [small_scene(seed, 300) for seed in range(2)]
  coord, offsets, features, valid = (np.stack(a) for a in zip(*scenes))
  targets = jax.jit(jax.vmap(functools.partial(
      offsets_lib.teacher_offset_targets, cfg=cfg, magnitude_prior=magnitude_prior,
      direction_prior=direction_prior)))
  # The op names of the lowered program, from its debug locations: a compiled program may
  # come from the persistent compilation cache, whose key ignores op names.
  text = targets.lower(offsets, coord, features, valid,
                       jax.random.split(jax.random.key(0), 2)).as_text(debug_info=True)
  parts = {profile_step.part_of(name) for name in re.findall(r'loc\("([^"]+)"\(', text)}
  assert {"ODR", "SCR K-means", "SCR kNN", "SCR components"} <= parts
