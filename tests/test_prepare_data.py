"""prepare_data and show_scene end to end on tiny synthetic and raw-format inputs.

Production runs write thousands of 50k-200k point scenes; here 2 small scenes.
"""
import numpy as np

from experiments import prepare_data, show_scene
from pointins_jax.data import pointcept_io, synthetic_indoor
from tests.test_readers import _write_kitti


def test_synthetic_indoor_end_to_end(tmp_path, capsys):
  out = str(tmp_path / "out")
  argv = ["synthetic-indoor", "--out", out, "--num-scenes", "2", "--seed", "1",
          "--val-fraction", "0.5", "--small"]
  assert prepare_data.main(argv) == 0
  summary = capsys.readouterr().out
  for word in ("scenes", "points", "instances", "median", "p99", "dropped"):
    assert word in summary
  train, val = pointcept_io.list_scenes(out, "train"), pointcept_io.list_scenes(out, "val")
  assert len(train) == len(val) == 1
  scene = pointcept_io.read_scene(train[0], "synthetic-indoor")  # reads segment20.npy
  seed = int(train[0].rsplit("_", 1)[1])
  expected = synthetic_indoor.generate_room(seed, small=True)
  np.testing.assert_array_equal(scene.coord, expected.coord)
  np.testing.assert_array_equal(scene.segment, expected.segment)
  np.testing.assert_array_equal(scene.instance, expected.instance)
  # Same seed, same dataset.
  again = str(tmp_path / "again")
  assert prepare_data.main(argv[:2] + [again] + argv[3:]) == 0
  np.testing.assert_array_equal(
      pointcept_io.read_scene(pointcept_io.list_scenes(again, "val")[0]).coord,
      pointcept_io.read_scene(val[0]).coord)

  png, html = str(tmp_path / "scene.png"), str(tmp_path / "scene.html")
  assert show_scene.main([train[0], "--color", "semantic", "--out", png]) == 0
  assert show_scene.main([train[0], "--color", "instance", "--out", html]) == 0
  with open(png, "rb") as stream:
    assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(html) as stream:
    assert "plotly" in stream.read(20000).lower()


def test_synthetic_outdoor_end_to_end(tmp_path):
  out = str(tmp_path / "out")
  assert prepare_data.main(["synthetic-outdoor", "--out", out, "--num-scenes", "2",
                            "--val-fraction", "0", "--small"]) == 0
  [first, _] = pointcept_io.list_scenes(out, "train")
  scene = pointcept_io.read_scene(first, "synthetic-outdoor")
  assert scene.strength is not None and scene.color is None
  assert show_scene.main([first, "--color", "rgb", "--out", str(tmp_path / "s.png")]) == 0


def test_raw_conversion_reports_dropped_points(tmp_path, capsys):
  points = np.array([[1, 2, 3, 0.5], [np.nan, 0, 0, 0.1], [7, 8, 9, 1.0]], np.float32)
  _write_kitti(tmp_path / "raw", points=points, raw_labels=np.array([40, 40, 48], np.uint32))
  out = str(tmp_path / "out")
  assert prepare_data.main(["semantickitti", "--raw", str(tmp_path / "raw"), "--out", out]) == 0
  captured = capsys.readouterr()
  table = captured.out.splitlines()
  header, row = table[0].split(), table[1].split()
  assert row[0] == "val" and row[header.index("dropped")] == "1"
  assert "dropped: points removed for non-finite (NaN/inf) coordinates" in table
  # Per scene, on stderr: why points were dropped, and that 2 points are too few to pretrain.
  assert "000000.bin: dropped 1 points (non-finite coordinates)." in captured.err
  assert "only 2 points, fewer than data.min_view_points=64" in captured.err
  scene = pointcept_io.read_scene(pointcept_io.list_scenes(out, "val")[0], "semantickitti")
  np.testing.assert_array_equal(scene.segment, [8, 10])


def test_errors_exit_nonzero_with_message(tmp_path, capsys):
  assert prepare_data.main(["semantickitti", "--raw", str(tmp_path), "--out",
                            str(tmp_path / "o")]) == 1
  assert "sequences" in capsys.readouterr().err
  assert prepare_data.main(["synthetic-indoor", "--out", str(tmp_path / "o"),
                            "--num-scenes", "0"]) == 1
  assert show_scene.main([str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 1
  assert show_scene.main([str(tmp_path / "nope"), "--out", str(tmp_path / "x.jpg")]) == 1
