"""metrics.jsonl and TensorBoard after a resume read as one run."""
import glob

from pointins_jax import metric_writer


def test_resume_drops_rows_past_the_restored_step(tmp_path):
  workdir = str(tmp_path)
  with metric_writer.MetricWriter(workdir, tensorboard=False) as writer:
    for step in (5, 10, 15, 20, 25):  # killed at 25; the last checkpoint is 20
      writer.write(step, {"loss": float(step)})
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 26, "lo')  # a row cut short by the kill
  with metric_writer.MetricWriter(workdir, tensorboard=False, resume_step=20) as writer:
    for step in (21, 25, 30):
      writer.write(step, {"loss": -float(step)})
  rows = metric_writer.read_metrics(workdir)
  assert [r["step"] for r in rows] == [5, 10, 15, 20, 21, 25, 30]
  assert [r["loss"] for r in rows] == [5.0, 10.0, 15.0, 20.0, -21.0, -25.0, -30.0]
  # A fresh start (no checkpoint) in the same folder begins a new log.
  with metric_writer.MetricWriter(workdir, tensorboard=False, resume_step=0) as writer:
    writer.write(1, {"loss": 1.0})
  assert [r["step"] for r in metric_writer.read_metrics(workdir)] == [1]


def _events(path):
  """(step, kind, value) of each event in a TFRecord event file (no tensorboard needed)."""
  from tensorboardX.proto import event_pb2
  out = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    length = int.from_bytes(data[pos:pos + 8], "little")
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    pos += 12 + length + 4  # length, its crc, the record, its crc
    if event.HasField("session_log"):
      out.append((event.step, "session_log", event.session_log.status))
    elif event.HasField("summary"):
      out.append((event.step, "scalar", event.summary.value[0].simple_value))
  return out


def test_resumed_tensorboard_purges_the_redone_steps(tmp_path):
  from tensorboardX.proto import event_pb2
  workdir = str(tmp_path)
  with metric_writer.MetricWriter(workdir) as writer:
    for step in (5, 10, 15):
      writer.write(step, {"loss": float(step)})
  with metric_writer.MetricWriter(workdir, resume_step=10) as writer:
    writer.write(15, {"loss": -15.0})
  first, second = sorted(glob.glob(str(tmp_path / "tensorboard" / "events.*")),
                         key=lambda p: p.endswith(".resume10"))
  assert [e for e in _events(first) if e[1] == "session_log"] == []
  # TensorBoard drops every earlier event with step >= a SessionLog START's step.
  assert _events(second) == [(11, "session_log", event_pb2.SessionLog.START),
                             (15, "scalar", -15.0)]
