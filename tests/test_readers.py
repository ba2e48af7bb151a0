"""Readers of every format on small files written here: exact round trips, bad input.

Production inputs: ScanNet meshes ~100k-150k vertices, KITTI ~120k points, nuScenes
~35k points; the files here hold 4-6 points.
"""
import json
import os

import numpy as np
import plyfile
import pytest

from pointins_jax.data import labels, nuscenes, pointcept_io, scannet, semantickitti
from pointins_jax.data.scene import Scene, SceneError

# --------------------------------------------------------------------------- Pointcept


def _scene(n=5, seed=0):
  rng = np.random.default_rng(seed)
  return Scene(coord=rng.normal(size=(n, 3)).astype(np.float32),
               color=rng.integers(0, 256, (n, 3)).astype(np.float32),
               normal=np.tile(np.float32([0, 0, 1]), (n, 1)),
               segment=np.array([0, 1, 19, -1, 5][:n], np.int32),
               instance=np.array([-1, -1, 0, 1, 1][:n], np.int32))


def test_pointcept_round_trip_and_dataset_segment_file(tmp_path):
  scene = _scene()
  folder = str(tmp_path / "train" / "scene0000_00")
  segment200 = np.array([0, 2, 199, -1, 7], np.int32)
  pointcept_io.write_scene(scene, folder, {"segment20": scene.segment, "segment200": segment200})
  back = pointcept_io.read_scene(folder)
  for field in ("coord", "color", "normal", "segment", "instance"):
    np.testing.assert_array_equal(getattr(back, field), getattr(scene, field))
  assert back.strength is None and back.name == "scene0000_00"
  np.testing.assert_array_equal(pointcept_io.read_scene(folder, "scannet200").segment, segment200)
  assert pointcept_io.list_scenes(str(tmp_path), "train") == [folder]


def test_pointcept_uint8_color_and_column_labels(tmp_path):
  # Pointcept's own preprocessing stores colour as uint8 and labels as [N, 1] int16.
  folder = tmp_path / "s"
  folder.mkdir()
  np.save(folder / "coord.npy", np.zeros((3, 3), np.float32))
  np.save(folder / "color.npy", np.array([[0, 128, 255]] * 3, np.uint8))
  np.save(folder / "segment20.npy", np.array([[1], [2], [-1]], np.int16))
  scene = pointcept_io.read_scene(str(folder), "scannet")
  np.testing.assert_array_equal(scene.color[0], [0, 128, 255])
  np.testing.assert_array_equal(scene.segment, [1, 2, -1])


@pytest.mark.parametrize("case", ["missing", "length", "nan", "range", "empty", "dataset"])
def test_pointcept_bad_input_names_the_file(tmp_path, case):
  folder = tmp_path / "s"
  pointcept_io.write_scene(_scene(), str(folder))
  coord = np.load(folder / "coord.npy")
  expected = {"missing": "coord.npy", "length": "instance.npy", "nan": "coord.npy",
              "range": "class id 19", "empty": "empty", "dataset": "segment200.npy"}[case]
  dataset = None
  if case == "missing":
    os.remove(folder / "coord.npy")
  elif case == "length":
    np.save(folder / "instance.npy", np.zeros(4, np.int32))
  elif case == "nan":
    coord[2, 1] = np.nan
    np.save(folder / "coord.npy", coord)
  elif case == "range":  # class 19 does not exist in S3DIS (13 classes)
    os.rename(folder / "segment.npy", folder / "segment_s3dis.npy")
    np.save(folder / "segment.npy", np.load(folder / "segment_s3dis.npy"))
    dataset = "s3dis"
  elif case == "empty":
    for name in os.listdir(folder):
      os.remove(folder / name)
    np.save(folder / "coord.npy", np.zeros((0, 3), np.float32))
  elif case == "dataset":
    dataset = "scannet200"
  with pytest.raises(SceneError, match=expected):
    pointcept_io.read_scene(str(folder), dataset)


def test_list_scenes_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="train"):
    pointcept_io.list_scenes(str(tmp_path), "train")
  (tmp_path / "val").mkdir()
  with pytest.raises(FileNotFoundError, match="no scene folders"):
    pointcept_io.list_scenes(str(tmp_path), "val")


def test_dataset_info():
  info = labels.dataset_info("scannet")
  assert info.num_classes == 20 and len(info.thing_classes) == 18 and info.feature_kind == "indoor"
  assert labels.dataset_info("semantickitti").thing_classes == tuple(range(8))
  assert labels.dataset_info("nuscenes").num_classes == 16
  assert labels.dataset_info("s3dis").num_classes == 13
  assert labels.dataset_info("scannet200").segment_file == "segment200.npy"
  with pytest.raises(ValueError, match="unknown dataset"):
    labels.dataset_info("kitti")

# ----------------------------------------------------------------------------- ScanNet

# A square of two triangles in the z = 0 plane plus a vertical triangle; segments 0, 1, 2.
VERTS = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [2, 0, 1]], np.float32)
FACES = [[0, 1, 2], [0, 2, 3], [1, 4, 5]]
TSV = ("id\traw_category\tcategory\tcount\tnyu40id\n"
       "1\twall\twall\t1\t1\n"
       "2\tchair\tchair\t1\t5\n"
       "40\tbox\tbox\t1\t29\n"
       "13\tpillow\tpillow\t1\t18\n")


def _write_scannet(raw, name="scene0000_00", verts=VERTS, seg_indices=(0, 0, 0, 0, 1, 1),
                   groups=None, splits=True):
  scan = raw / "scans" / name
  scan.mkdir(parents=True, exist_ok=True)
  vertex = np.zeros(len(verts), [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"),
                                 ("green", "u1"), ("blue", "u1"), ("alpha", "u1")])
  for i, axis in enumerate("xyz"):
    vertex[axis] = verts[:, i]
  vertex["red"], vertex["green"], vertex["blue"] = np.arange(len(verts)) * 10, 7, 255
  face = np.array([(f,) for f in FACES], [("vertex_indices", "i4", (3,))])
  plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex"),
                   plyfile.PlyElement.describe(face, "face")], byte_order="<").write(
                       str(scan / f"{name}_vh_clean_2.ply"))
  (scan / f"{name}_vh_clean_2.0.010000.segs.json").write_text(
      json.dumps({"segIndices": list(seg_indices)}))
  groups = groups if groups is not None else [
      {"objectId": 0, "label": "wall", "segments": [1]},
      {"objectId": 1, "label": "chair", "segments": [0]}]
  (scan / f"{name}.aggregation.json").write_text(json.dumps({"segGroups": groups}))
  (raw / "scannetv2-labels.combined.tsv").write_text(TSV)
  if splits:
    (raw / "scannetv2_train.txt").write_text("")
    (raw / "scannetv2_val.txt").write_text(f"{name}\n")
  return scan


def test_scannet_convert_values(tmp_path):
  scan = _write_scannet(tmp_path)
  [source] = scannet.find_scenes(str(tmp_path))
  assert source.split == "val" and source.name == "scene0000_00"
  loaded = source.load()
  scene = loaded.scene
  np.testing.assert_array_equal(scene.coord, VERTS)
  np.testing.assert_array_equal(scene.color[:, 0], np.arange(6) * 10)
  # wall = nyu40 1 -> class 0; chair = nyu40 5 -> class 4; ScanNet-200: wall 0, chair 1.
  np.testing.assert_array_equal(scene.segment, [4, 4, 4, 4, 0, 0])
  np.testing.assert_array_equal(loaded.extra_segments["segment200"], [1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(scene.instance, [1, 1, 1, 1, 0, 0])
  # Area-weighted vertex normals: the flat square has +z, vertex 1 mixes +z and -y.
  np.testing.assert_allclose(scene.normal[[0, 2, 3]], [[0, 0, 1]] * 3, atol=1e-6)
  np.testing.assert_allclose(scene.normal[4], [0, -1, 0], atol=1e-6)
  np.testing.assert_allclose(scene.normal[1], np.array([0, -1, 1]) / np.sqrt(2), atol=1e-6)
  assert loaded.dropped == 0 and os.path.isdir(scan)


def test_scannet_unmapped_nyu_and_alternative_aggregation_name(tmp_path):
  # box: nyu40 29 is not a ScanNet-20 class (-> -1) but id 40 is ScanNet-200 ("box"... id
  # 40 -> index of 40 in the valid ids); points in no group get -1 everywhere.
  scan = _write_scannet(tmp_path, groups=[{"objectId": 3, "label": "box", "segments": [1]}],
                        splits=False)
  os.rename(scan / "scene0000_00.aggregation.json",
            scan / "scene0000_00_vh_clean.aggregation.json")
  [source] = scannet.find_scenes(str(tmp_path))
  loaded = source.load()
  assert source.split == "train"
  np.testing.assert_array_equal(loaded.scene.segment, [-1] * 6)
  box200 = labels.SCANNET200_VALID_IDS.index(40)
  np.testing.assert_array_equal(loaded.extra_segments["segment200"], [-1] * 4 + [box200] * 2)
  np.testing.assert_array_equal(loaded.scene.instance, [-1] * 4 + [3] * 2)


def test_scannet_nan_vertices_are_dropped_and_counted(tmp_path):
  verts = VERTS.copy()
  verts[3] = np.nan
  _write_scannet(tmp_path, verts=verts)
  loaded = scannet.find_scenes(str(tmp_path))[0].load()
  assert loaded.dropped == 1 and loaded.scene.num_points == 5


@pytest.mark.parametrize("case", ["ply", "segs", "aggregation", "label", "segs_length", "tsv"])
def test_scannet_bad_input_names_the_file(tmp_path, case):
  scan = _write_scannet(tmp_path)
  name = "scene0000_00"
  expected = {"ply": "_vh_clean_2.ply", "segs": "segs.json", "aggregation": "aggregation.json",
              "label": "aggregation.json", "segs_length": "segs.json",
              "tsv": "labels.combined.tsv"}[case]
  if case == "ply":
    (scan / f"{name}_vh_clean_2.ply").write_bytes(b"not a ply")
  elif case == "segs":
    os.remove(scan / f"{name}_vh_clean_2.0.010000.segs.json")
  elif case == "aggregation":
    os.remove(scan / f"{name}.aggregation.json")
  elif case == "label":
    _write_scannet(tmp_path, groups=[{"objectId": 0, "label": "unicorn", "segments": [0]}])
  elif case == "segs_length":
    _write_scannet(tmp_path, seg_indices=(0, 0, 1))
  elif case == "tsv":
    (tmp_path / "scannetv2-labels.combined.tsv").write_text("id\tname\n1\twall\n")
  with pytest.raises(SceneError, match=expected):
    scannet.find_scenes(str(tmp_path))[0].load()

# ----------------------------------------------------------------------- SemanticKITTI


def _write_kitti(raw, sequence=8, points=None, raw_labels=None):
  folder = raw / "sequences" / f"{sequence:02d}"
  (folder / "velodyne").mkdir(parents=True, exist_ok=True)
  (folder / "labels").mkdir(exist_ok=True)
  if points is None:
    points = np.array([[1, 2, 3, 0.5], [4, 5, 6, 0.25], [7, 8, 9, 1.0], [0, 0, -1, 0.0]],
                      np.float32)
  if raw_labels is None:  # car inst 7, road, moving-car inst 7 (same object), unlabeled
    raw_labels = np.array([10 | 7 << 16, 40, 252 | 7 << 16, 0], np.uint32)
  points.tofile(folder / "velodyne" / "000000.bin")
  raw_labels.tofile(folder / "labels" / "000000.label")
  return folder


def test_semantickitti_values_and_split(tmp_path):
  _write_kitti(tmp_path, 8)
  _write_kitti(tmp_path, 0)
  sources = semantickitti.find_scenes(str(tmp_path))
  assert [(s.split, s.name) for s in sources] == [("train", "00_000000"), ("val", "08_000000")]
  loaded = sources[1].load()
  scene = loaded.scene
  np.testing.assert_array_equal(scene.coord, [[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, -1]])
  np.testing.assert_array_equal(scene.strength, [0.5, 0.25, 1.0, 0.0])
  np.testing.assert_array_equal(scene.segment, [0, 8, 0, -1])
  # car 7 and moving-car 7 are different panoptic labels -> different instances.
  np.testing.assert_array_equal(scene.instance, [0, -1, 1, -1])


@pytest.mark.parametrize("case", ["missing_label", "bin_size", "label_count", "label_id",
                                  "empty", "all_nan"])
def test_semantickitti_bad_input_names_the_file(tmp_path, case):
  folder = _write_kitti(tmp_path)
  bin_path, label_path = folder / "velodyne" / "000000.bin", folder / "labels" / "000000.label"
  expected = {"missing_label": "000000.label", "bin_size": "000000.bin",
              "label_count": "000000.label", "label_id": "000000.label",
              "empty": "000000.bin", "all_nan": "000000.bin"}[case]
  if case == "missing_label":
    os.remove(label_path)
  elif case == "bin_size":
    bin_path.write_bytes(bin_path.read_bytes()[:-4])
  elif case == "label_count":
    np.zeros(3, np.uint32).tofile(label_path)
  elif case == "label_id":
    np.array([10, 40, 12345, 0], np.uint32).tofile(label_path)
  elif case == "empty":
    bin_path.write_bytes(b"")
  elif case == "all_nan":
    np.full((4, 4), np.nan, np.float32).tofile(bin_path)
  with pytest.raises(SceneError, match=expected):
    semantickitti.find_scenes(str(tmp_path))[0].load()


def test_semantickitti_nan_points_dropped_and_counted(tmp_path):
  points = np.array([[1, 2, 3, 0.5], [np.nan, 0, 0, 0.1], [7, 8, 9, 1.0]], np.float32)
  _write_kitti(tmp_path, points=points, raw_labels=np.array([40, 40, 48], np.uint32))
  loaded = semantickitti.find_scenes(str(tmp_path))[0].load()
  assert loaded.dropped == 1
  np.testing.assert_array_equal(loaded.scene.segment, [8, 10])

# ---------------------------------------------------------------------------- nuScenes


def _write_nuscenes(raw, split="val", token="abc", points=None, panoptic=None):
  (raw / split).mkdir(parents=True, exist_ok=True)
  (raw / "panoptic" / split).mkdir(parents=True, exist_ok=True)
  if points is None:
    points = np.array([[1, 2, 3, 255, 0], [4, 5, 6, 0, 1], [7, 8, 9, 51, 2],
                       [1, 1, 1, 10, 3], [2, 2, 2, 20, 4]], np.float32)
  if panoptic is None:  # car inst 3, driveable surface, car inst 4, noise, adult inst 3
    panoptic = np.array([17003, 24000, 17004, 0, 2003], np.uint16)
  points.tofile(raw / split / f"{token}.pcd.bin")
  np.savez_compressed(raw / "panoptic" / split / f"{token}_panoptic.npz", data=panoptic)
  return raw / split / f"{token}.pcd.bin", raw / "panoptic" / split / f"{token}_panoptic.npz"


def test_nuscenes_values(tmp_path):
  _write_nuscenes(tmp_path)
  [source] = nuscenes.find_scenes(str(tmp_path))
  assert (source.split, source.name) == ("val", "abc")
  scene = source.load().scene
  np.testing.assert_array_equal(scene.coord[:, 0], [1, 4, 7, 1, 2])
  np.testing.assert_allclose(scene.strength, np.array([255, 0, 51, 10, 20]) / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(scene.segment, [3, 10, 3, -1, 6])
  np.testing.assert_array_equal(scene.instance, [1, -1, 2, -1, 0])


@pytest.mark.parametrize("case", ["missing_label", "bin_size", "label_count", "label_id",
                                  "empty", "no_data_key"])
def test_nuscenes_bad_input_names_the_file(tmp_path, case):
  bin_path, label_path = _write_nuscenes(tmp_path)
  expected = {"missing_label": "abc_panoptic.npz", "bin_size": "abc.pcd.bin",
              "label_count": "abc_panoptic.npz", "label_id": "abc_panoptic.npz",
              "empty": "abc.pcd.bin", "no_data_key": "abc_panoptic.npz"}[case]
  if case == "missing_label":
    os.remove(label_path)
  elif case == "bin_size":
    bin_path.write_bytes(bin_path.read_bytes()[:-4])
  elif case == "label_count":
    np.savez(label_path, data=np.zeros(4, np.uint16))
  elif case == "label_id":
    np.savez(label_path, data=np.array([17003, 24000, 40000, 0, 2003], np.uint16))
  elif case == "empty":
    bin_path.write_bytes(b"")
  elif case == "no_data_key":
    np.savez(label_path, other=np.zeros(5, np.uint16))
  with pytest.raises(SceneError, match=expected):
    nuscenes.find_scenes(str(tmp_path))[0].load()


def test_nuscenes_missing_layout(tmp_path):
  with pytest.raises(SceneError, match="pcd.bin"):
    nuscenes.find_scenes(str(tmp_path))


def test_point_files_read_each_format_and_estimate_normals(tmp_path):
  from pointins_jax.data import point_files
  rng = np.random.default_rng(0)
  xy = rng.random((400, 2)) * 2.0
  plane = np.concatenate([xy, np.full((400, 1), 0.5)], axis=1).astype(np.float32)
  np.save(tmp_path / "scan.npy", np.concatenate([plane, rng.random((400, 3)) * 255], axis=1))
  scene = point_files.read_point_file(str(tmp_path / "scan.npy"))
  assert scene.num_points == 400 and scene.color is not None and scene.normal is None
  np.testing.assert_allclose(point_files.estimate_normals(scene.coord), [[0, 0, 1]] * 400,
                             atol=1e-5)  # a horizontal plane: every normal is +z
  kitti = np.concatenate([plane, rng.random((400, 1))], axis=1).astype(np.float32)
  kitti.tofile(tmp_path / "scan.bin")
  assert point_files.read_point_file(str(tmp_path / "scan.bin")).strength is not None
  (tmp_path / "scan.txt").write_text("1 2 3\n")
  with pytest.raises(SceneError, match="unknown suffix"):
    point_files.read_point_file(str(tmp_path / "scan.txt"))
  np.save(tmp_path / "bad.npy", np.zeros((5, 5)))
  with pytest.raises(SceneError, match=r"bad.npy.*\[N, 3\]"):
    point_files.read_point_file(str(tmp_path / "bad.npy"))


def test_scannet_label_map_row_outside_nyu40_is_refused_naming_the_category(tmp_path):
  _write_scannet(tmp_path)
  (tmp_path / "scannetv2-labels.combined.tsv").write_text(TSV.replace("chair\t1\t5", "chair\t1\t400"))
  with pytest.raises(SceneError, match=r"object 1 has label 'chair', whose nyu40id 400 .* "
                                       r"outside 1\.\.40"):
    scannet.find_scenes(str(tmp_path))[0].load()


def test_scannet_aggregation_segments_missing_from_segs_are_refused_or_reported(tmp_path):
  # Object 7 lists only segment 9, which segs.json lacks: its instance would vanish.
  _write_scannet(tmp_path, groups=[{"objectId": 0, "label": "wall", "segments": [1]},
                                   {"objectId": 7, "label": "chair", "segments": [9]}])
  with pytest.raises(SceneError, match=r"object 7 \('chair'\) lists segments \[9\]"):
    scannet.find_scenes(str(tmp_path))[0].load()
  # Object 1 lists segments 0 and 9: it keeps segment 0's points, and the loss is reported.
  _write_scannet(tmp_path, groups=[{"objectId": 0, "label": "wall", "segments": [1]},
                                   {"objectId": 1, "label": "chair", "segments": [0, 9]}])
  loaded = scannet.find_scenes(str(tmp_path))[0].load()
  np.testing.assert_array_equal(loaded.scene.instance, [1, 1, 1, 1, 0, 0])
  [warning] = loaded.warnings
  assert "object 1 ('chair'): 1 of its 2 segments are not in" in warning and "segs.json" in warning


def test_scannet_empty_and_all_nan_meshes_say_why(tmp_path):
  _write_scannet(tmp_path, verts=np.full((6, 3), np.nan, np.float32))
  with pytest.raises(SceneError, match=r"no finite points left \(all 6 have NaN/inf"):
    scannet.find_scenes(str(tmp_path))[0].load()
  scan = _write_scannet(tmp_path)
  vertex = np.zeros(0, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                        ("blue", "u1")])
  face = np.zeros(0, [("vertex_indices", "i4", (3,))])
  plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex"),
                   plyfile.PlyElement.describe(face, "face")]).write(
                       str(scan / "scene0000_00_vh_clean_2.ply"))
  with pytest.raises(SceneError, match="has no vertices"):
    scannet.find_scenes(str(tmp_path))[0].load()
