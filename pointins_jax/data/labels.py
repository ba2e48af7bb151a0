"""Class maps of the supported datasets and their evaluation protocol facts.

Class ids follow Pointcept's preprocessed data: 0..C-1 contiguous, -1 = ignore.
Raw-id maps (nyu40 -> ScanNet-20, ScanNet ids -> ScanNet-200, SemanticKITTI raw ->
learning map, nuScenes general -> 16 lidarseg classes) live here so the raw-format
converters and the synthetic generators share one definition.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pointins_jax.data.scene import IGNORE_INDEX

# ----------------------------------------------------------------------------- ScanNet
SCANNET20_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "desk", "curtain", "refrigerator",
    "shower curtain", "toilet", "sink", "bathtub", "otherfurniture")
# nyu40 ids of the 20 benchmark classes, in SCANNET20_NAMES order.
SCANNET20_VALID_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34,
                             36, 39)
SCANNET20_INSTANCE_CLASSES = tuple(range(2, 20))  # all but wall (0), floor (1)

# ScanNet raw category ids (`id` column of scannetv2-labels.combined.tsv) of the
# ScanNet-200 benchmark, in SCANNET200_NAMES order (Pointcept scannet200_constants).
SCANNET200_VALID_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 26, 27,
    28, 29, 31, 32, 33, 34, 35, 36, 38, 39, 40, 41, 42, 44, 45, 46, 47, 48, 49, 50, 51, 52,
    54, 55, 56, 57, 58, 59, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 82, 84, 86, 87, 88, 89, 90, 93, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104,
    105, 106, 107, 110, 112, 115, 116, 118, 120, 121, 122, 125, 128, 130, 131, 132, 134,
    136, 138, 139, 140, 141, 145, 148, 154, 155, 156, 157, 159, 161, 163, 165, 166, 168,
    169, 170, 177, 180, 185, 188, 191, 193, 195, 202, 208, 213, 214, 221, 229, 230, 232,
    233, 242, 250, 261, 264, 276, 283, 286, 300, 304, 312, 323, 325, 331, 342, 356, 370,
    392, 395, 399, 408, 417, 488, 540, 562, 570, 572, 581, 609, 748, 776, 1156, 1163, 1164,
    1165, 1166, 1167, 1168, 1169, 1170, 1171, 1172, 1173, 1174, 1175, 1176, 1178, 1179,
    1180, 1181, 1182, 1183, 1184, 1185, 1186, 1187, 1188, 1189, 1190, 1191)
SCANNET200_NAMES = (
    "wall", "chair", "floor", "table", "door", "couch", "cabinet", "shelf", "desk",
    "office chair", "bed", "pillow", "sink", "picture", "window", "toilet", "bookshelf",
    "monitor", "curtain", "book", "armchair", "coffee table", "box", "refrigerator", "lamp",
    "kitchen cabinet", "towel", "clothes", "tv", "nightstand", "counter", "dresser", "stool",
    "cushion", "plant", "ceiling", "bathtub", "end table", "dining table", "keyboard", "bag",
    "backpack", "toilet paper", "printer", "tv stand", "whiteboard", "blanket",
    "shower curtain", "trash can", "closet", "stairs", "microwave", "stove", "shoe",
    "computer tower", "bottle", "bin", "ottoman", "bench", "board", "washing machine",
    "mirror", "copier", "basket", "sofa chair", "file cabinet", "fan", "laptop", "shower",
    "paper", "person", "paper towel dispenser", "oven", "blinds", "rack", "plate",
    "blackboard", "piano", "suitcase", "rail", "radiator", "recycling bin", "container",
    "wardrobe", "soap dispenser", "telephone", "bucket", "clock", "stand", "light",
    "laundry basket", "pipe", "clothes dryer", "guitar", "toilet paper holder", "seat",
    "speaker", "column", "bicycle", "ladder", "bathroom stall", "shower wall", "cup",
    "jacket", "storage bin", "coffee maker", "dishwasher", "paper towel roll", "machine",
    "mat", "windowsill", "bar", "toaster", "bulletin board", "ironing board", "fireplace",
    "soap dish", "kitchen counter", "doorframe", "toilet paper dispenser", "mini fridge",
    "fire extinguisher", "ball", "hat", "shower curtain rod", "water cooler",
    "paper cutter", "tray", "shower door", "pillar", "ledge", "toaster oven", "mouse",
    "toilet seat cover dispenser", "furniture", "cart", "storage container", "scale",
    "tissue box", "light switch", "crate", "power outlet", "decoration", "sign",
    "projector", "closet door", "vacuum cleaner", "candle", "plunger", "stuffed animal",
    "headphones", "dish rack", "broom", "guitar case", "range hood", "dustpan",
    "hair dryer", "water bottle", "handicap bar", "purse", "vent", "shower floor",
    "water pitcher", "mailbox", "bowl", "paper bag", "alarm clock", "music stand",
    "projector screen", "divider", "laundry detergent", "bathroom counter", "object",
    "bathroom vanity", "closet wall", "laundry hamper", "bathroom stall door",
    "ceiling light", "trash bin", "dumbbell", "stair rail", "tube", "bathroom cabinet",
    "cd case", "closet rod", "coffee kettle", "structure", "shower head", "keyboard piano",
    "case of water bottles", "coat rack", "storage organizer", "folded chair", "fire alarm",
    "power strip", "calendar", "poster", "potted plant", "luggage", "mattress")
SCANNET200_INSTANCE_CLASSES = tuple(c for c in range(200) if c not in (0, 2))  # not wall/floor

# ------------------------------------------------------------------- S3DIS, Structured3D
S3DIS_NAMES = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table",
               "chair", "sofa", "bookcase", "board", "clutter")
STRUCTURED3D_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "picture", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "ceiling",
    "refrigerator", "television", "nightstand", "sink", "lamp", "otherstructure",
    "otherfurniture", "otherprop")
STRUCTURED3D_INSTANCE_CLASSES = tuple(
    c for c, name in enumerate(STRUCTURED3D_NAMES) if name not in ("wall", "floor", "ceiling"))

# ----------------------------------------------------------------------- SemanticKITTI
SEMANTICKITTI_NAMES = (
    "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist",
    "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building", "fence",
    "vegetation", "trunk", "terrain", "pole", "traffic-sign")
SEMANTICKITTI_THING_CLASSES = tuple(range(8))
# Official learning map (semantic-kitti.yaml, 0-based like Pointcept): raw id -> 0..18 or
# -1. Raw ids missing here are not part of the label set and are rejected by readers.
SEMANTICKITTI_LEARNING_MAP = {
    0: -1, 1: -1, 10: 0, 11: 1, 13: 4, 15: 2, 16: 4, 18: 3, 20: 4, 30: 5, 31: 6, 32: 7,
    40: 8, 44: 9, 48: 10, 49: 11, 50: 12, 51: 13, 52: -1, 60: 8, 70: 14, 71: 15, 72: 16,
    80: 17, 81: 18, 99: -1, 252: 0, 253: 6, 254: 5, 255: 7, 256: 4, 257: 4, 258: 3, 259: 4}

# ---------------------------------------------------------------------------- nuScenes
NUSCENES_NAMES = (
    "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
    "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk",
    "terrain", "manmade", "vegetation")
NUSCENES_THING_CLASSES = tuple(range(10))
# nuScenes general (32-class lidarseg index) -> 16 merged classes; noise/animal/... -> -1.
NUSCENES_GENERAL_TO_16 = (
    -1, -1, 6, 6, 6, -1, 6, -1, -1, 0, -1, -1, 7, -1, 1, 2, 2, 3, 4, -1, -1, 5, 8, 9, 10, 11,
    12, 13, 14, -1, 15, -1)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What configs and metrics need to know about a dataset.

  Attributes:
    names: class names, index = class id.
    thing_classes: ids of the classes that have instances (instance AP / PQ things).
    ignore_index: `segment` value of ignored points.
    feature_kind: "indoor" (coord, color, normal) or "outdoor" (coord, strength).
    segment_file: the Pointcept-folder file holding `segment` for this dataset.
  """
  names: tuple[str, ...]
  thing_classes: tuple[int, ...]
  ignore_index: int
  feature_kind: str
  segment_file: str

  @property
  def num_classes(self) -> int:
    return len(self.names)


_DATASETS = {
    "synthetic-indoor": DatasetInfo(SCANNET20_NAMES, SCANNET20_INSTANCE_CLASSES, IGNORE_INDEX,
                                    "indoor", "segment20.npy"),
    "scannet": DatasetInfo(SCANNET20_NAMES, SCANNET20_INSTANCE_CLASSES, IGNORE_INDEX,
                           "indoor", "segment20.npy"),
    "scannet200": DatasetInfo(SCANNET200_NAMES, SCANNET200_INSTANCE_CLASSES, IGNORE_INDEX,
                              "indoor", "segment200.npy"),
    "s3dis": DatasetInfo(S3DIS_NAMES, tuple(range(len(S3DIS_NAMES))), IGNORE_INDEX,
                         "indoor", "segment.npy"),
    "structured3d": DatasetInfo(STRUCTURED3D_NAMES, STRUCTURED3D_INSTANCE_CLASSES,
                                IGNORE_INDEX, "indoor", "segment.npy"),
    "synthetic-outdoor": DatasetInfo(SEMANTICKITTI_NAMES, SEMANTICKITTI_THING_CLASSES,
                                     IGNORE_INDEX, "outdoor", "segment.npy"),
    "semantickitti": DatasetInfo(SEMANTICKITTI_NAMES, SEMANTICKITTI_THING_CLASSES,
                                 IGNORE_INDEX, "outdoor", "segment.npy"),
    "nuscenes": DatasetInfo(NUSCENES_NAMES, NUSCENES_THING_CLASSES, IGNORE_INDEX, "outdoor",
                            "segment.npy"),
}
DATASET_NAMES = tuple(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
  """The `DatasetInfo` of `name` (one of DATASET_NAMES)."""
  if name not in _DATASETS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}.")
  return _DATASETS[name]


def lookup_table(mapping: dict[int, int], size: int) -> tuple[np.ndarray, np.ndarray]:
  """(table int32 [size], known bool [size]) so that `table[raw]` maps raw ids.

  `known[raw]` is False for raw ids outside `mapping`, which readers reject.
  """
  table = np.full(size, IGNORE_INDEX, np.int32)
  known = np.zeros(size, bool)
  for raw, mapped in mapping.items():
    table[raw], known[raw] = mapped, True
  return table, known
