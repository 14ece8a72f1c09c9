"""Runs a notebook of notebooks/ headless, as a reader would, with its parameter variables
(CHINCHAX_STORE, CHINCHAX_CSV, ...) set in the kernel's environment."""
import os

import nbformat
from nbclient import NotebookClient

from tests.helpers import REPO

PARAMETERS = ("CHINCHAX_STORE", "CHINCHAX_CSV", "CHINCHAX_COLUMNS", "CHINCHAX_BOOTSTRAP")


def path(name: str) -> str:
  return os.path.join(REPO, "notebooks", name)


def execute(name: str, monkeypatch, cwd=REPO, cells=None, **env) -> nbformat.NotebookNode:
  """Executes notebooks/NAME top to bottom in cwd (or only cells(nb.cells)); fails on any
  cell error (nbclient raises CellExecutionError naming the cell) and returns the executed
  notebook."""
  for key in PARAMETERS:
    monkeypatch.delenv(key, raising=False)
  for key, value in env.items():
    monkeypatch.setenv(key, str(value))
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(path(name), as_version=4)
  if cells is not None:
    nb.cells = cells(nb.cells)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": cwd}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "error"]
  assert not errors, errors
  return nb


def assert_figures(directory: str, names) -> None:
  """Every named PNG exists in directory and is a real, non-trivial PNG."""
  for name in names:
    file = os.path.join(directory, name)
    assert os.path.exists(file), f"{name} not written to {directory}: {os.listdir(directory)}"
    with open(file, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{file} is not a PNG"
    assert os.path.getsize(file) > 5000, f"{file} is nearly empty"
