"""The demo notebook runs top to bottom (reduced budgets), so it cannot rot."""
import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "pointins_demo.ipynb")


def test_outputs_are_stripped():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, "strip outputs before committing"


def test_demo_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv("POINTINS_NOTEBOOK_QUICK", "1")
  monkeypatch.setenv("POINTINS_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
  client.execute()
  # The figures the notebook promises were written.
  for name in ("scene.png", "centroids.png", "prior_labels.png", "my_scan.png"):
    assert (tmp_path / "work" / name).is_file(), name
