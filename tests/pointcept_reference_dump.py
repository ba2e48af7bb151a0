"""Pointcept's PyTorch PTv3 (model.py) on one scene: state_dict + eval-mode output -> .npz.

Runs under a Pointcept python (torch + spconv [+ torch-scatter]); imports no jax.

  POINTCEPT_PTV3_DIR=/path/to/PointTransformerV3 \
  /path/to/pointcept/python tests/pointcept_reference_dump.py SCENE.npz OUT.npz \
      --config '{"enc_depths": [1, 1, 1, 1, 1], ...}'

SCENE.npz: coord f32 [n, 3], feat f32 [n, C_in], grid i32 [n, 3] (benchmarks/protocol_scene.py;
the given grid is used as Pointcept's grid_coord, not recomputed). --config: keyword arguments
of Pointcept's `PointTransformerV3.__init__` (lists become tuples). The model is built with a
fixed torch seed; then every norm's affine parameters and BatchNorm running statistics are
drawn at random (with the same seed) so that imported norms are exercised, not identities.

OUT.npz: the state_dict under its torch keys (float arrays as float32, `num_batches_tracked`
as int64) plus `__output__` = point.feat [n, C_out] of the eval-mode forward (batch 1), in the
scene's point order.

Eval mode: `model.eval()`, then every biased `spconv.SubMConv3d` (the blocks' CPE convs) back
in `.train()`: spconv's CPU eval path asserts on biased convs (spconv#719); for a submanifold
conv train mode only moves where the bias is added. BatchNorm, dropout, DropPath stay in eval.

Two changes to the reference's behaviour, needed for a deterministic, comparable output:
* `shuffle_orders` of every `SerializedPooling` is set to the model's `shuffle_orders`.
  PointTransformerV3.__init__ (model.py, also in eval) builds its SerializedPooling modules
  without passing `shuffle_orders`, so they keep their default True and permute the four curve
  rows of every coarse stage with `torch.randperm` even when the model says
  shuffle_orders=False; stage 0 alone follows the flag.
* torch runs on one thread (env POINTCEPT_THREADS, default 1): spconv 2.3.8's CPU sparse conv
  is racy with more threads (the k=5 stem conv on a 3000-point scene gave ~40 wrong rows,
  max error ~0.1, different every call, with 2 threads; exact with 1).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn

OUTPUT_KEY = "__output__"
GRID_SIZE = 0.02


def build(config, seed):
  ptv3_dir = os.environ.get("POINTCEPT_PTV3_DIR")
  if not ptv3_dir:
    raise SystemExit("set POINTCEPT_PTV3_DIR to the PointTransformerV3 code dir (model.py).")
  sys.path.insert(0, os.path.dirname(os.path.abspath(ptv3_dir)))
  module = __import__(f"{os.path.basename(os.path.abspath(ptv3_dir))}.model",
                      fromlist=["PointTransformerV3"])
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
  torch.manual_seed(seed)
  model = module.PointTransformerV3(**kwargs)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) and m.weight is not None:
        m.weight.copy_(1.0 + 0.2 * torch.randn_like(m.weight))
        m.bias.copy_(0.1 * torch.randn_like(m.bias))
      if isinstance(m, nn.BatchNorm1d):
        m.running_mean.copy_(0.1 * torch.randn_like(m.running_mean))
        m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
  return model


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("scene")
  parser.add_argument("out")
  parser.add_argument("--config", required=True, help="JSON: PointTransformerV3 kwargs")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  torch.set_num_threads(int(os.environ.get("POINTCEPT_THREADS", "1")))

  import spconv.pytorch as spconv  # pylint: disable=import-outside-toplevel
  model = build(json.loads(args.config), args.seed)
  model.eval()
  for m in model.modules():  # model.py does not pass shuffle_orders on (see module doc)
    if type(m).__name__ == "SerializedPooling":
      m.shuffle_orders = model.shuffle_orders
  for m in model.modules():  # spconv#719 (see module doc)
    if isinstance(m, spconv.SubMConv3d) and m.bias is not None:
      m.train()

  with np.load(args.scene) as scene:
    coord = torch.from_numpy(np.ascontiguousarray(scene["coord"], np.float32))
    feat = torch.from_numpy(np.ascontiguousarray(scene["feat"], np.float32))
    grid = torch.from_numpy(np.ascontiguousarray(scene["grid"], np.int32))
  data = {"coord": coord, "feat": feat, "grid_coord": grid,
          "offset": torch.tensor([coord.shape[0]], dtype=torch.long), "grid_size": GRID_SIZE}
  with torch.no_grad():
    out = model(data).feat.detach().cpu().numpy().astype(np.float32)

  arrays = {}
  for key, value in model.state_dict().items():
    value = value.detach().cpu()
    arrays[key] = value.numpy() if not value.is_floating_point() else value.float().numpy()
  arrays[OUTPUT_KEY] = out
  np.savez(args.out, **arrays)
  print(json.dumps({"out": args.out, "output_shape": list(out.shape),
                    "num_tensors": len(arrays) - 1}), flush=True)


if __name__ == "__main__":
  main()
