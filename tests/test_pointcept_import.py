"""Pointcept state_dict import: names and shapes as Pointcept's modules define them, layouts,
round trip, and errors. Variables are random arrays of `eval_shape`d structures (no init)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pointins_jax.model import configs
from pointins_jax.model import pointcept_import
from pointins_jax.model import ptv3


def random_variables(variant, seed=0):
  config = configs.model_config(variant)
  model = ptv3.PointTransformerV3(config)
  n = 1024
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, n, 3)), jnp.zeros((1, n, config.in_channels)),
      jnp.zeros((1, n, 3), jnp.int32), jnp.ones((1, n), bool), train=False))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def _flat(variables):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))


# Names and torch shapes read off Pointcept's PT-v3m1 / PT-v3m2 module definitions.
@pytest.mark.parametrize("variant,expected", [
    ("base_unet", {
        "embedding.stem.conv.weight": (32, 5, 5, 5, 6),  # spconv [C_out, kx, ky, kz, C_in]
        "embedding.stem.norm.running_var": (32,),
        "enc.enc0.block0.cpe.0.weight": (32, 3, 3, 3, 32),
        "enc.enc0.block0.attn.qkv.weight": (96, 32),
        "enc.enc1.down.proj.weight": (64, 32),
        "enc.enc1.down.norm.0.running_mean": (64,),
        "enc.enc3.block5.mlp.0.fc1.weight": (1024, 256),
        "dec.dec0.up.proj.0.weight": (64, 64),
        "dec.dec3.up.proj.0.weight": (256, 512),
        "dec.dec3.up.proj_skip.0.weight": (256, 256),
        "dec.dec2.up.proj_skip.1.weight": (128,),
        "dec.dec0.block1.norm2.0.bias": (64,),
    }),
    ("large", {
        "embedding.stem.linear.weight": (48, 9),
        "embedding.stem.norm.weight": (48,),
        "embedding.mask_token": (1, 48),
        "enc.enc4.block2.mlp.0.fc2.weight": (512, 2048),
        "enc.enc3.block11.attn.proj.bias": (384,),
        "enc.enc4.down.norm.0.weight": (512,),
    }),
])
def test_names_and_shapes_match_pointcept(variant, expected):
  state_dict = pointcept_import.export_state_dict(random_variables(variant))
  for key, shape in expected.items():
    assert state_dict[key].shape == shape, key


def test_large_key_count():
  """24 blocks x 18 tensors + 4 downs x 4 + stem (linear, norm: 4) + mask token."""
  assert len(pointcept_import.export_state_dict(random_variables("large"))) == 24 * 18 + 16 + 5


def test_layouts():
  variables = random_variables("base_unet")
  params = variables["params"]
  state_dict = pointcept_import.export_state_dict(variables)
  conv = params["enc0_block0"]["cpe_conv"]["kernel"]  # [27, C_in, C_out]
  torch_conv = state_dict["enc.enc0.block0.cpe.0.weight"]
  # Offset (dx, dy, dz) = (1, -1, 0) is kernel row (2 * 3 + 0) * 3 + 1 = 19.
  np.testing.assert_array_equal(torch_conv[5, 2, 0, 1, 7], conv[19, 7, 5])
  qkv = params["enc0_block0"]["attn"]["qkv"]["kernel"]
  np.testing.assert_array_equal(state_dict["enc.enc0.block0.attn.qkv.weight"], qkv.T)
  np.testing.assert_array_equal(state_dict["enc.enc0.block0.cpe.2.weight"],
                                params["enc0_block0"]["cpe_norm"]["scale"])
  np.testing.assert_array_equal(state_dict["enc.enc1.down.norm.0.running_var"],
                                variables["batch_stats"]["enc1_down"]["norm"]["norm"]["var"])


@pytest.mark.parametrize("variant", ["base_unet", "large"])
def test_round_trip_with_prefix_and_buffers(variant):
  source = random_variables(variant, seed=1)
  state_dict = {f"module.backbone.{k}": v
                for k, v in pointcept_import.export_state_dict(source).items()}
  state_dict["module.backbone.embedding.stem.norm.num_batches_tracked"] = np.array(3)
  loaded = pointcept_import.import_state_dict(state_dict, random_variables(variant, seed=2),
                                              prefix="module.backbone.")
  expected, got = _flat(source), _flat(loaded)
  assert expected.keys() == got.keys()
  for path in expected:
    np.testing.assert_array_equal(got[path], expected[path], err_msg=str(path))


def test_errors_name_the_key():
  variables = random_variables("large")
  state_dict = pointcept_import.export_state_dict(variables)
  missing = dict(state_dict)
  del missing["enc.enc2.block1.attn.qkv.bias"]
  with pytest.raises(KeyError, match="enc.enc2.block1.attn.qkv.bias"):
    pointcept_import.import_state_dict(missing, variables)
  wrong = dict(state_dict, **{"embedding.stem.linear.weight": np.zeros((48, 6))})
  with pytest.raises(ValueError, match="embedding.stem.linear.weight.*in_channels"):
    pointcept_import.import_state_dict(wrong, variables)
  extra = dict(state_dict, **{"dec.dec0.up.proj.0.weight": np.zeros((64, 96))})
  with pytest.raises(KeyError, match="dec.dec0.up.proj.0.weight.*enc_mode"):
    pointcept_import.import_state_dict(extra, variables)


def test_probe_loads_a_sonata_style_checkpoint_file(tmp_path):
  """config.pretrained_pointcept: an .npz with student + teacher backbones and a head."""
  from configs import probe_indoor  # pylint: disable=import-outside-toplevel
  from pointins_jax.probe import loop  # pylint: disable=import-outside-toplevel
  student, teacher = random_variables("tiny", seed=3), random_variables("tiny", seed=4)
  entries = {f"module.student.backbone.{k}": v
             for k, v in pointcept_import.export_state_dict(student).items()}
  entries.update({f"module.teacher.backbone.{k}": v
                  for k, v in pointcept_import.export_state_dict(teacher).items()})
  entries["module.student.head.weight"] = np.zeros((4, 4), np.float32)  # not a backbone key
  path = str(tmp_path / "sonata.npz")
  np.savez(path, **entries)
  config = probe_indoor.get_config("decoder_semseg,demo")
  config.pretrained_pointcept = path
  resolved, pretrained = loop.resolve_model(config)
  assert resolved.model.enc_mode is False  # decoder probing: a U-Net around the encoder
  for key, value in _flat(student["params"]).items():
    np.testing.assert_array_equal(_flat(pretrained)[key], value)
  # The encoder params land in the probe network (merge_pretrained); its decoder keeps a
  # fresh init.
  from pointins_jax.probe import train  # pylint: disable=import-outside-toplevel
  shapes = jax.eval_shape(lambda: train.init_probe_state(resolved, jax.random.key(0), 10))
  target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes.params["backbone"])
  backbone = _flat(train.merge_pretrained(target, pretrained))
  key = ("enc0_block0", "attn", "qkv", "kernel")
  np.testing.assert_array_equal(backbone[key], _flat(student["params"])[key])
  assert any(k[0].startswith("dec") for k in backbone)


def test_pointcept_checkpoint_errors_name_the_field(tmp_path):
  with pytest.raises(FileNotFoundError, match="pretrained_pointcept"):
    pointcept_import.read_state_dict(str(tmp_path / "missing.pth"))
  bad = tmp_path / "weights.ckpt"
  bad.write_text("x")
  with pytest.raises(ValueError, match=r"\.npz"):
    pointcept_import.read_state_dict(str(bad))
  with pytest.raises(KeyError, match="PTv3 stem"):
    pointcept_import.backbone_prefix({"fc.weight": np.zeros(1)}, "w.npz")
  two = {"a.embedding.stem.linear.weight": 0, "b.embedding.stem.linear.weight": 0}
  with pytest.raises(KeyError, match="student"):
    pointcept_import.backbone_prefix(two, "w.npz")
