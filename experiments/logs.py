"""Logging for the command-line entry points: absl logging at INFO on stderr.

Library code logs with `absl.logging` and warns with `warn` (a Python warning, so
notebooks and tests see it as one); `setup()`, called by every CLI's main, routes
warnings into the same log and keeps INFO to chinchax's own lines.
"""
import logging as std_logging
import os
import sys
import warnings

from absl import flags, logging

# INFO lines come from chinchax only; the libraries' INFO (orbax logs every save,
# jax its backend probing) is dropped, their warnings and errors pass.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = tuple(os.path.join(_ROOT, package) + os.sep
             for package in ("experiments", "sweeps", "models", "parallel", "kernels", "benchmarks"))


class _OnlyOurInfo(std_logging.Filter):
  def filter(self, record):
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(OURS)


def setup():
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OnlyOurInfo) for f in handler.filters):
    handler.addFilter(_OnlyOurInfo())
  std_logging.captureWarnings(True)


def warn(message: str):
  """A UserWarning attributed to the caller's caller (the public function)."""
  warnings.warn(message, stacklevel=3)


EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 130


def guard(body, bad_input=(ValueError,)):
  """Runs a CLI's body() -> exit code. Bad input ends with one plain `error: ...`
  line on stderr and exit 2 (plain like absl's usage errors: scripts match it);
  an interrupt (Ctrl-C, or a SIGTERM the body turned into one) exits 130."""
  try:
    return body()
  except bad_input as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  except KeyboardInterrupt as e:
    print(f"interrupted: {e}", file=sys.stderr)
    return EXIT_INTERRUPTED


def exit_bad_input(message):
  """Ends a CLI before its main as guard() ends bad input in it: `error: ...`, exit 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def parse_flags(argv):
  """Every CLI's absl `flags_parser` (app.run(main, flags_parser=logs.parse_flags)): a
  malformed, unknown or invalid flag is bad input, so `error: flag --x=y: why` and
  exit 2, where absl's default prints `FATAL Flags parsing error` and exits 1."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    exit_bad_input(e)
