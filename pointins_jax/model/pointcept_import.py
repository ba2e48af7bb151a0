"""Pointcept / Sonata PyTorch PTv3 `state_dict` <-> our Flax variables.

Key names follow Pointcept's PT-v3m1 (`point_transformer_v3m1_base.py`) and PT-v3m2
(`point_transformer_v3m2_sonata.py`) modules, e.g. `embedding.stem.conv.weight`,
`enc.enc0.block0.attn.qkv.weight`, `enc.enc1.down.proj.weight`, `dec.dec0.up.proj.0.weight`.
Layouts: torch Linear weight [C_out, C_in] = our Dense kernel transposed; spconv 2.x
SubMConv3d weight [C_out, kx, ky, kz, C_in] (ptv3_ssl_spec.md §3.7) = our kernel
[K^3, C_in, C_out] with offsets x slowest (`sparse_conv.kernel_offsets`); norms' weight/bias
= scale/bias; BatchNorm running_mean/var = batch_stats mean/var. torch is optional: values
may be torch tensors or numpy arrays.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pointins_jax.model import ptv3

# (our module path, Pointcept module path) as regular expressions / substitution templates.
_MODULE_RULES = (
    (r"stem_linear", r"embedding.stem.linear"),
    (r"stem_conv", r"embedding.stem.conv"),
    (r"stem_norm(/norm)?", r"embedding.stem.norm"),
    (r"enc(\d+)_down/proj", r"enc.enc\1.down.proj"),
    (r"enc(\d+)_down/norm/norm", r"enc.enc\1.down.norm.0"),
    (r"(enc|dec)(\d+)_block(\d+)/cpe_conv", r"\1.\1\2.block\3.cpe.0"),
    (r"(enc|dec)(\d+)_block(\d+)/cpe_linear", r"\1.\1\2.block\3.cpe.1"),
    (r"(enc|dec)(\d+)_block(\d+)/cpe_norm", r"\1.\1\2.block\3.cpe.2"),
    (r"(enc|dec)(\d+)_block(\d+)/norm(1|2)", r"\1.\1\2.block\3.norm\4.0"),
    (r"(enc|dec)(\d+)_block(\d+)/attn/(qkv|proj)", r"\1.\1\2.block\3.attn.\4"),
    (r"(enc|dec)(\d+)_block(\d+)/(fc1|fc2)", r"\1.\1\2.block\3.mlp.0.\4"),
    (r"dec(\d+)_up/proj", r"dec.dec\1.up.proj.0"),
    (r"dec(\d+)_up/proj_norm/norm", r"dec.dec\1.up.proj.1"),
    (r"dec(\d+)_up/proj_skip", r"dec.dec\1.up.proj_skip.0"),
    (r"dec(\d+)_up/proj_skip_norm/norm", r"dec.dec\1.up.proj_skip.1"),
)
_LEAF_NAMES = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
               "var": "running_var"}
# Pointcept buffers with no Flax counterpart.
_IGNORED_SUFFIXES = (".num_batches_tracked",)


def torch_key(flax_path: tuple[str, ...]) -> str:
  """Pointcept key of one of our leaves, e.g. ('enc0_block0', 'attn', 'qkv', 'kernel')."""
  if flax_path == ("mask_token",):
    return "embedding.mask_token"
  module, leaf = "/".join(flax_path[:-1]), flax_path[-1]
  for pattern, template in _MODULE_RULES:
    if re.fullmatch(pattern, module):
      return f"{re.sub(pattern, template, module)}.{_LEAF_NAMES[leaf]}"
  raise KeyError(f"no Pointcept name for Flax parameter {'/'.join(flax_path)}")


def _to_torch_layout(value: np.ndarray, flax_path) -> np.ndarray:
  if flax_path[-1] != "kernel":
    return value.reshape(1, -1) if flax_path == ("mask_token",) else value
  if value.ndim == 2:  # Dense [C_in, C_out] -> Linear [C_out, C_in]
    return value.T
  k3, c_in, c_out = value.shape  # SubMConv [K^3, C_in, C_out] -> spconv [C_out, k, k, k, C_in]
  k = round(k3 ** (1 / 3))
  return value.reshape(k, k, k, c_in, c_out).transpose(4, 0, 1, 2, 3)


def _from_torch_layout(value: np.ndarray, flax_path) -> np.ndarray:
  if flax_path[-1] != "kernel":
    return value.reshape(-1) if flax_path == ("mask_token",) else value
  if value.ndim == 2:
    return value.T
  c_out, k = value.shape[0], value.shape[1]
  return value.transpose(1, 2, 3, 4, 0).reshape(k ** 3, value.shape[-1], c_out)


def _numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def export_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our variables ({'params', optionally 'batch_stats'}) as a Pointcept state_dict."""
  out = {}
  for collection in ("params", "batch_stats"):
    for path, value in flax.traverse_util.flatten_dict(
        flax.core.unfreeze(variables.get(collection, {}))).items():
      out[torch_key(path)] = _to_torch_layout(np.asarray(value), path)
  return out


def import_state_dict(state_dict: Mapping[str, Any], variables: Mapping[str, Any], *,
                      prefix: str = "") -> dict[str, Any]:
  """Loads a Pointcept PTv3 state_dict into (a copy of) our initialised `variables`.

  Args:
    state_dict: Pointcept keys -> torch tensors or numpy arrays. Keys must start with
      `prefix` (e.g. 'module.student.backbone.' for a Sonata pretraining checkpoint).
    variables: our model's variables from `init`, giving the target structure and shapes.
  Returns:
    variables with every parameter (and BatchNorm statistic) replaced.
  Raises:
    KeyError: a parameter of ours has no entry in the state_dict, or the state_dict has
      entries we would drop (e.g. a decoder loaded into an encoder-only model).
    ValueError: a tensor's shape differs from the one our config implies.
  """
  entries = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  used = set()
  loaded = {}
  for collection in ("params", "batch_stats"):
    if collection not in variables:
      continue
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables[collection]))
    new = {}
    for path, target in flat.items():
      key = torch_key(path)
      if key not in entries:
        raise KeyError(f"state_dict has no {prefix}{key} (for {'/'.join(path)}); is the config "
                       f"(variant, enc_mode, stem) the checkpoint's?")
      value = _from_torch_layout(_numpy(entries[key]), path)
      if value.shape != target.shape:
        raise ValueError(f"{prefix}{key}: shape {_numpy(entries[key]).shape} gives "
                         f"{value.shape}, but the model expects {target.shape} at "
                         f"{'/'.join(path)}; check model.in_channels / widths.")
      new[path] = value.astype(np.asarray(target).dtype)
      used.add(key)
    loaded[collection] = flax.traverse_util.unflatten_dict(new)
  unused = sorted(k for k in entries if k not in used and not k.endswith(_IGNORED_SUFFIXES))
  if unused:
    raise KeyError(f"state_dict entries with no place in this model: {unused[:8]}"
                   f"{' ...' if len(unused) > 8 else ''} ({len(unused)} in all); decoder weights "
                   f"need model.enc_mode=False.")
  return {**variables, **loaded}


# Keys that end a PTv3 state_dict's stem; what precedes them is the checkpoint's prefix.
_STEM_KEYS = ("embedding.stem.linear.weight", "embedding.stem.conv.weight")


def read_state_dict(path: str) -> dict[str, Any]:
  """A Pointcept checkpoint's state_dict from `path`.

  `.pth` / `.pt`: `torch.load` on CPU (needs torch), unwrapping a `state_dict` / `model`
  entry as Pointcept and Sonata checkpoints have; `.npz`: numpy arrays by Pointcept key
  (torch-free: `np.savez(out, **{k: v.numpy() for k, v in state_dict.items()})`).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.pretrained_pointcept={path!r}: no such file.")
  if path.endswith(".npz"):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  if not path.endswith((".pth", ".pt")):
    raise ValueError(f"config.pretrained_pointcept={path!r}: use a .pth/.pt (torch) or .npz "
                     "(numpy) state_dict.")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise ImportError(f"reading {path} needs torch (`pip install torch`), or convert it to "
                      ".npz on a machine that has torch.") from err
  checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model"):
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
      checkpoint = checkpoint[key]
  return dict(checkpoint)


def backbone_prefix(state_dict: Mapping[str, Any], source: str = "state_dict") -> str:
  """The key prefix of the PTv3 backbone: '' or e.g. 'module.student.backbone.'.

  A Sonata / PointINS pretraining checkpoint holds student and teacher backbones; the
  student is taken, as Pointcept's finetuning configs do.
  """
  prefixes = sorted({k[:-len(stem)] for k in state_dict for stem in _STEM_KEYS
                     if k.endswith(stem)})
  if not prefixes:
    raise KeyError(f"{source}: no PTv3 stem ({' or '.join(_STEM_KEYS)}) among its "
                   f"{len(state_dict)} keys; is it a Point Transformer V3 checkpoint?")
  student = [p for p in prefixes if "student" in p]
  if len(prefixes) > 1 and len(student) != 1:
    raise KeyError(f"{source}: several PTv3 backbones ({prefixes}) and no single student one.")
  return student[0] if len(prefixes) > 1 else prefixes[0]


def load_backbone(path: str, model_config) -> dict[str, Any]:
  """Flax backbone params of PTv3 `model_config` from the Pointcept checkpoint at `path`.

  Encoder-only checkpoints (Sonata, DOS, PointINS pretraining) load into the encoder; a
  checkpoint with decoder (`dec.`) weights loads into the U-Net. The returned tree is for
  `probe.train.merge_pretrained` (parameters the checkpoint lacks, e.g. a probe's
  decoder, keep their initialisation there).
  """
  state_dict = read_state_dict(path)
  prefix = backbone_prefix(state_dict, path)
  config = ml_collections.ConfigDict(model_config.to_dict())
  config.enc_mode = not any(k.startswith(prefix + "dec.") for k in state_dict)
  model = ptv3.PointTransformerV3(config)
  n = 64
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, n, 3)), jnp.zeros((1, n, config.in_channels)),
      jnp.zeros((1, n, 3), jnp.int32), jnp.ones((1, n), bool), train=False))
  if "batch_stats" in shapes:
    raise ValueError(f"{path}: model {config.get('variant', '')} has BatchNorm statistics "
                     "(the m1 stem), which the probe does not carry; use a LayerNorm (m2 / "
                     "Sonata) model variant.")
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  return import_state_dict(state_dict, variables, prefix=prefix)["params"]
