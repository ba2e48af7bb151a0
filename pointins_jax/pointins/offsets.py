"""The offset branch: frames, teacher targets (ODR and SCR in their layouts), losses.

Offsets are predicted in each view's augmented frame. Before any regularisation or loss
they are mapped back to the scene's original frame (paper Sec. 3.2), so that the two
views, and the teacher and the student, are compared in one frame.

The frames, exactly. A view's points are `x_view = A x_orig + t + d` (`transforms.
ViewRecord`): A, t the affine part (scale, rotations, flips, centre shifts), d a per-point
displacement (jitter, elastic distortion). The offset branch's frame is the affine image
`A x_orig + t` of the original frame: an offset o_view is the vector, rotated and scaled
with the view, from a point to its instance centre in the *undistorted* scene, so
`o_orig = A^-1 o_view` (`to_original_frame`) holds exactly, and every target is built in
the original frame from each point's recorded original coordinate (`origin_coord`, SCR's
coordinates). Teacher and student, and both views, then meet in one frame with no error
(tests/test_offsets.py: < 1 mm through a real batch with elastic distortion on).

Why d is left out of the mapping: d is known only at the points, not at the centre an
offset points to, so an offset drawn in the distorted scene has no exact original-frame
counterpart (mapping it with A^-1 is off by d(centre) - d(point): about 10 cm median with
the indoor elastic settings). Treating d as an input perturbation, like colour jitter,
keeps the mapping and the cross-view targets exact; the network is asked to be invariant
to it, as the semantic branch is. `data.augment.elastic=()` removes that burden (and the
augmentation) for both branches.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pointins_jax.pointins import heads as heads_lib
from pointins_jax.pointins import odr as odr_lib
from pointins_jax.pointins import scr as scr_lib

_EPS = 1e-8


def to_original_frame(offsets, view_linear):
  """Maps offsets from the offset branch's view frame back to the original frame: A^-1 o.

  Exact (module docstring): the offset frame is the view's affine image of the original
  frame; jitter and elastic distortion are not part of it.

  Args:
    offsets: f32 [..., N, 3] displacements in the view frame (metres).
    view_linear: f32 [..., 3, 3] linear part A of `x_view = A x_orig + t + d`.
  Returns:
    f32 [..., N, 3] displacements in the original frame.
  """
  inverse = jnp.linalg.inv(view_linear)
  return jnp.einsum("...ij,...nj->...ni", inverse, offsets)


def offset_loss(pred, target, weight):
  """PointGroup-style offset loss (paper Eq. 6): L1 + (1 - cosine), masked mean.

  Args:
    pred, target: f32 [..., 3] offsets (same frame).
    weight: f32/bool [...] per-point weight (0 = no target / not visible).
  Returns:
    (loss scalar, dict of the l1 and cosine parts).
  """
  weight = weight.astype(jnp.float32)
  l1 = jnp.sum(jnp.abs(pred - target), axis=-1)
  cos = jnp.sum(pred * target, axis=-1) / (
      (heads_lib.safe_norm(pred) + _EPS) * (heads_lib.safe_norm(target) + _EPS))
  denom = jnp.maximum(jnp.sum(weight), 1.0)
  l1_mean = jnp.sum(l1 * weight) / denom
  dir_mean = jnp.sum((1.0 - cos) * weight) / denom
  return l1_mean + dir_mean, {"l1": l1_mean, "direction": dir_mean}


def teacher_offset_targets(offsets, coord, features, valid, key, cfg, magnitude_prior,
                           direction_prior):
  """Teacher-side target offsets O* for one view (Algorithm 1, steps 3-6).

  Args:
    offsets: f32 [N, 3] teacher offsets, original frame.
    coord: f32 [N, 3] point coordinates, original frame.
    features: f32 [N, C] teacher backbone features (for SCR's K-means).
    valid: bool [N].
    key: PRNG key (K-means initialisation).
    cfg: `config.offset` (fields odr, scr, layout, and SCR hyper-parameters).
    magnitude_prior, direction_prior: ODR priors (see `odr.pit_normalize`).
  Returns:
    dict(target f32 [N, 3], has_target bool [N], num_instances i32 []).
  """
  def odr(o, mask):
    if not cfg.odr:
      return o
    with jax.named_scope("odr"):
      return odr_lib.pit_normalize(o, mask, magnitude_prior, direction_prior)

  def scr(o, mask):
    if not cfg.scr:
      return o, mask, jnp.zeros((), jnp.int32)
    out = scr_lib.spatial_clustering_targets(
        coord, o, features, mask, key, num_clusters=cfg.num_clusters,
        kmeans_iters=cfg.kmeans_iters, k_nn=cfg.k_nn, tau_d=cfg.tau_d, tau_min=cfg.tau_min,
        centroid_source=cfg.centroid_source, knn_impl=cfg.get("knn_impl", "auto"))
    return out["target"], out["has_target"] & mask, out["num_instances"]

  offsets = jax.lax.stop_gradient(offsets)
  if cfg.layout == "odr_then_scr":  # the paper's layout
    target, has_target, num = scr(odr(offsets, valid), valid)
  elif cfg.layout == "scr_then_odr":  # Table 8 ablation
    target, has_target, num = scr(offsets, valid)
    target = odr(target, has_target)
  else:
    raise ValueError(f"config.offset.layout={cfg.layout!r}: use 'odr_then_scr' or "
                     "'scr_then_odr'.")
  return {"target": target, "has_target": has_target, "num_instances": num}


def student_odr_kl(offsets, weight, magnitude_prior, num_bins: int = 32,
                   softness: float = 0.05):
  """ODR as a student-side KL loss (Table 8, the dagger row).

  The prior is cut into `num_bins` equal-probability bins (edges from its inverse
  CDF); the student's magnitudes are soft-assigned to bins (sigmoid edges, width
  `softness` x bin width) and KL(student histogram || uniform bin mass) is returned.

  Args:
    offsets: f32 [M, 3] student offsets (original frame); weight: [M].
  """
  u = (jnp.arange(1, num_bins) / num_bins).astype(jnp.float32)
  inner = magnitude_prior.ppf(u)
  widths = jnp.diff(inner)
  scale = softness * jnp.maximum(jnp.concatenate([widths[:1], widths]), 1e-4)
  mag = heads_lib.safe_norm(offsets)[:, None]
  below = jax.nn.sigmoid((inner[None, :] - mag) / scale[None, :])  # P(mag < edge_b)
  cdf = jnp.concatenate([jnp.zeros_like(mag), below, jnp.ones_like(mag)], axis=1)
  probs = jnp.clip(jnp.diff(cdf, axis=1), 0.0, 1.0)  # [M, num_bins]
  w = weight.astype(jnp.float32)[:, None]
  hist = jnp.sum(probs * w, axis=0) / jnp.maximum(jnp.sum(w), 1.0)
  hist = hist / jnp.maximum(jnp.sum(hist), _EPS)
  return jnp.sum(hist * (jnp.log(hist + _EPS) + jnp.log(float(num_bins))))
