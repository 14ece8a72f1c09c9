"""absl flags shared by several sweeps CLIs (absl forbids defining one twice in a process)."""
from absl import flags

STORE = flags.DEFINE_string("store", None, "Run store: a directory of run directories, "
                            "one per run id.")
