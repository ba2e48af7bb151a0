"""ScanNet v2 raw scans -> scenes with ScanNet-20 and ScanNet-200 labels.

Layout (the official release):
  RAW/scannetv2-labels.combined.tsv              columns incl. raw_category, id, nyu40id
  RAW/scannetv2_train.txt, RAW/scannetv2_val.txt official split lists (optional; without
                                                 them every scene goes to `train`)
  RAW/scans/<scene>/<scene>_vh_clean_2.ply       binary PLY: x, y, z, red, green, blue
                                                 (alpha), faces
  RAW/scans/<scene>/<scene>_vh_clean_2.0.010000.segs.json   {"segIndices": [...]}
  RAW/scans/<scene>/<scene>.aggregation.json     (or <scene>_vh_clean.aggregation.json)
                                                 {"segGroups": [{objectId, label, segments}]}

Labels follow Pointcept's preprocessing: segment20 maps nyu40 ids through
`labels.SCANNET20_VALID_NYU40_IDS`, segment200 maps ScanNet ids through
`labels.SCANNET200_VALID_IDS` (others -> -1), instance = the group's objectId (every
group, walls and floors included, -1 where no group). Normals are area-weighted vertex
normals of the mesh faces.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import plyfile

from pointins_jax.data import labels
from pointins_jax.data.pointcept_io import LoadedScene, SourceScene
from pointins_jax.data.scene import IGNORE_INDEX, NO_INSTANCE, Scene, SceneError, drop_non_finite

LABEL_MAP_FILE = "scannetv2-labels.combined.tsv"
NUM_NYU40 = 40  # nyu40id values are 1..40
SPLIT_FILES = {"train": "scannetv2_train.txt", "val": "scannetv2_val.txt"}


def read_label_map(path: str) -> dict[str, tuple[int, int]]:
  """raw_category -> (ScanNet id, nyu40 id) from scannetv2-labels.combined.tsv."""
  if not os.path.isfile(path):
    raise SceneError(f"{path}: missing ScanNet label map (ships with the ScanNet release).")
  with open(path, newline="") as stream:
    reader = csv.DictReader(stream, delimiter="\t")
    missing = {"raw_category", "id", "nyu40id"} - set(reader.fieldnames or ())
    if missing:
      raise SceneError(f"{path}: missing columns {sorted(missing)}.")
    try:
      return {row["raw_category"]: (int(row["id"]), int(row["nyu40id"])) for row in reader}
    except (TypeError, ValueError) as error:
      raise SceneError(f"{path}: non-integer id / nyu40id ({error}).") from error


def read_mesh(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(coord f32 [N, 3] metres, color f32 [N, 3] 0..255, normal f32 [N, 3]) of a PLY mesh.

  Vertices on no face have no normal; they get (0, 0, 1) (ScanNet meshes have none).
  """
  if not os.path.isfile(path):
    raise SceneError(f"{path}: missing mesh file.")
  try:
    ply = plyfile.PlyData.read(path)
    vertex = ply["vertex"]
    if len(vertex.data) == 0:
      raise SceneError(f"{path}: the mesh has no vertices (an empty scan); re-export it or "
                       "remove the scene.")
    coord = np.stack([vertex[k] for k in ("x", "y", "z")], -1).astype(np.float64)
    color = np.stack([vertex[k] for k in ("red", "green", "blue")], -1).astype(np.float32)
    face_list = ply["face"]["vertex_indices"]
    faces = (np.stack(face_list) if len(face_list) else np.zeros((0, 3))).astype(np.int64)
  except (KeyError, ValueError, plyfile.PlyParseError) as error:
    if isinstance(error, SceneError):
      raise
    raise SceneError(f"{path}: not a ScanNet mesh PLY with vertex x, y, z, red, green, blue "
                     f"and triangle faces ({error}).") from error
  if faces.ndim != 2 or faces.shape[1] != 3 or (
      faces.size and (faces.min() < 0 or faces.max() >= len(coord))):
    raise SceneError(f"{path}: faces must be triangles indexing the {len(coord)} vertices.")
  # Faces touching a NaN/inf vertex are left out; those vertices are dropped later.
  faces = faces[np.isfinite(coord).all(axis=1)[faces].all(axis=1)]
  a, b, c = coord[faces[:, 0]], coord[faces[:, 1]], coord[faces[:, 2]]
  face_normal = np.cross(b - a, c - a)  # length = 2 x area: area weighting
  normal = np.zeros_like(coord)
  for corner in range(3):
    np.add.at(normal, faces[:, corner], face_normal)
  length = np.linalg.norm(normal, axis=1, keepdims=True)
  normal = np.where(length > 0, normal / np.maximum(length, 1e-30), [0.0, 0.0, 1.0])
  return coord.astype(np.float32), color, normal.astype(np.float32)


def _read_json(path: str, key: str):
  if not os.path.isfile(path):
    raise SceneError(f"{path}: missing file.")
  try:
    with open(path) as stream:
      return json.load(stream)[key]
  except (ValueError, KeyError, TypeError) as error:
    raise SceneError(f"{path}: not JSON with a {key!r} entry ({error}).") from error


def _aggregation_path(scan_dir: str, name: str) -> str:
  for candidate in (f"{name}.aggregation.json", f"{name}_vh_clean.aggregation.json"):
    if os.path.isfile(os.path.join(scan_dir, candidate)):
      return os.path.join(scan_dir, candidate)
  raise SceneError(f"{os.path.join(scan_dir, name + '.aggregation.json')}: missing (nor "
                   f"{name}_vh_clean.aggregation.json).")


def convert_scan(scan_dir: str, label_map: dict[str, tuple[int, int]]) -> LoadedScene:
  """One ScanNet scan folder -> scene (segment = ScanNet-20) + segment20/segment200."""
  name = os.path.basename(os.path.normpath(scan_dir))
  coord, color, normal = read_mesh(os.path.join(scan_dir, f"{name}_vh_clean_2.ply"))
  segs_path = os.path.join(scan_dir, f"{name}_vh_clean_2.0.010000.segs.json")
  seg_indices = np.asarray(_read_json(segs_path, "segIndices"))
  if seg_indices.shape != (len(coord),) or not np.issubdtype(seg_indices.dtype, np.integer):
    raise SceneError(f"{segs_path}: segIndices must hold one integer per mesh vertex "
                     f"({len(coord)}), got {seg_indices.dtype} {seg_indices.shape}.")
  aggregation_path = _aggregation_path(scan_dir, name)
  valid20 = {nyu: index for index, nyu in enumerate(labels.SCANNET20_VALID_NYU40_IDS)}
  valid200 = {raw: index for index, raw in enumerate(labels.SCANNET200_VALID_IDS)}
  segment20 = np.full(len(coord), IGNORE_INDEX, np.int32)
  segment200 = np.full(len(coord), IGNORE_INDEX, np.int32)
  instance = np.full(len(coord), NO_INSTANCE, np.int32)
  known_segments, warnings = np.unique(seg_indices), []
  for group in _read_json(aggregation_path, "segGroups"):
    try:
      label, object_id, segments = group["label"], int(group["objectId"]), group["segments"]
    except (KeyError, TypeError, ValueError) as error:
      raise SceneError(f"{aggregation_path}: a segGroup lacks label/objectId/segments "
                       f"({error}).") from error
    if label not in label_map:
      raise SceneError(f"{aggregation_path}: label {label!r} is not a raw_category of "
                       f"{LABEL_MAP_FILE}.")
    scannet_id, nyu40_id = label_map[label]
    if not 1 <= nyu40_id <= NUM_NYU40:
      # Would silently turn the category's points into ignore.
      raise SceneError(f"{aggregation_path}: object {object_id} has label {label!r}, whose "
                       f"nyu40id {nyu40_id} in {LABEL_MAP_FILE} is outside 1..{NUM_NYU40}; "
                       "fix that row of the label map.")
    segments = np.asarray(segments, np.int64)
    missing = np.setdiff1d(segments, known_segments)
    if len(missing) == len(segments):
      raise SceneError(f"{aggregation_path}: object {object_id} ({label!r}) lists segments "
                       f"{missing[:5].tolist()}, none of which is in {segs_path}; the "
                       "aggregation and the segmentation come from different scans or "
                       "versions, re-download the scan.")
    if len(missing):
      warnings.append(f"{aggregation_path}: object {object_id} ({label!r}): "
                      f"{len(missing)} of its {len(segments)} segments are not in "
                      f"{segs_path}; their points stay unlabelled.")
    members = np.isin(seg_indices, segments)
    segment20[members] = valid20.get(nyu40_id, IGNORE_INDEX)
    segment200[members] = valid200.get(scannet_id, IGNORE_INDEX)
    instance[members] = object_id
  coord, color, normal, segment20, segment200, instance, dropped = drop_non_finite(
      coord, color, normal, segment20, segment200, instance, source=scan_dir)
  scene = Scene(coord=coord, color=color, normal=normal, segment=segment20, instance=instance,
                name=name, source=scan_dir)
  return LoadedScene(scene, {"segment20": segment20, "segment200": segment200}, dropped,
                     tuple(warnings))


def find_scenes(raw: str) -> list[SourceScene]:
  """The scans under RAW/scans, with their official split (train without split lists)."""
  scans = os.path.join(raw, "scans")
  if not os.path.isdir(scans):
    raise SceneError(f"{scans}: missing; --raw must be the ScanNet root holding scans/.")
  label_map = read_label_map(os.path.join(raw, LABEL_MAP_FILE))
  split_of = {}
  for split, file_name in SPLIT_FILES.items():
    path = os.path.join(raw, file_name)
    if os.path.isfile(path):
      with open(path) as stream:
        split_of.update({line.strip(): split for line in stream if line.strip()})
  names = sorted(n for n in os.listdir(scans) if os.path.isdir(os.path.join(scans, n)))
  if not names:
    raise SceneError(f"{scans}: holds no scan folders.")
  if split_of:
    unlisted = [n for n in names if n not in split_of]
    if unlisted:
      raise SceneError(f"{scans}: scans {unlisted[:3]}... are in neither "
                       f"{' nor '.join(SPLIT_FILES.values())}; remove them or fix the lists.")
  return [SourceScene(split_of.get(n, "train"), n,
                      lambda n=n: convert_scan(os.path.join(scans, n), label_map))
          for n in names]
