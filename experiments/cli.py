"""`chinchax SUBCOMMAND ...`: dispatches to the module entry points (the contract).

  chinchax train ...      == python -m experiments.train ...
  chinchax prepare ...    == python -m experiments.prepare ...
  chinchax launch ...     == python -m sweeps.launch ...
  chinchax fit ...        == python -m sweeps.fit ...
  chinchax prescribe ...  == python -m sweeps.prescribe ...
  chinchax verify ...     == python -m sweeps.verify ...
  chinchax --help         lists them; `chinchax SUBCOMMAND --help` shows its flags
"""
import runpy
import sys

COMMANDS = {"train": "experiments.train", "prepare": "experiments.prepare",
            "calibrate": "experiments.calibrate", "launch": "sweeps.launch",
            "fit": "sweeps.fit", "prescribe": "sweeps.prescribe", "verify": "sweeps.verify",
            "reproduce": "sweeps.reproduce"}
DESCRIPTIONS = {
    "train": "train one run into a run directory (resumes from its checkpoints)",
    "prepare": "tokenize a corpus once into ArrayRecord shards that training reads",
    "calibrate": "per-layer sparse-attention thresholds of a trained run at a target error",
    "launch": "launch a sweep definition into a run store (local processes or Slurm)",
    "fit": "fit a scaling law to a run store or a CSV: fit.json, diagnostics, plots",
    "prescribe": "turn a fit into a model config that spends a FLOP budget",
    "verify": "train the prescribed config and compare its loss with the law's prediction",
    "reproduce": "run a paper reproduction (experiments/reproduce/): its sweep, then its report",
}


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [f"usage: chinchax {{{'|'.join(COMMANDS)}}} [flags...]", "", "subcommands:"]
  lines += [f"  {name:<{width}}  {DESCRIPTIONS[name]}" for name in COMMANDS]
  lines += ["", "`chinchax SUBCOMMAND --help` lists a subcommand's flags."]
  return "\n".join(lines)


def main():
  if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0)
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    if len(sys.argv) >= 2:
      print(f"chinchax: unknown subcommand {sys.argv[1]!r}", file=sys.stderr)
    print(usage(), file=sys.stderr)
    sys.exit(2)
  module = COMMANDS[sys.argv[1]]
  sys.argv = [module] + sys.argv[2:]
  runpy.run_module(module, run_name="__main__", alter_sys=True)
