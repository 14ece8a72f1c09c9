"""`chinchax SUBCOMMAND ...`: dispatches to the module entry points (the contract).

  chinchax train ...      == python -m experiments.train ...
  chinchax launch ...     == python -m sweeps.launch ...
  chinchax fit ...        == python -m sweeps.fit ...
  chinchax prescribe ...  == python -m sweeps.prescribe ...
"""
import runpy
import sys

COMMANDS = {"train": "experiments.train", "launch": "sweeps.launch",
            "fit": "sweeps.fit", "prescribe": "sweeps.prescribe"}


def main():
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    print(f"usage: chinchax {{{'|'.join(COMMANDS)}}} [flags...]", file=sys.stderr)
    sys.exit(2)
  module = COMMANDS[sys.argv[1]]
  sys.argv = [module] + sys.argv[2:]
  runpy.run_module(module, run_name="__main__", alter_sys=True)
