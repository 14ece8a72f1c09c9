"""Text on the fit figures: axis labels, each law's form, number formatting, the parameter
lines with their bootstrap intervals, the fit's quality and diagnostics, figure titles, and
the white info box that carries them on an axes. Pure string building plus one `ax.text`
call, so it needs no pyplot; every other `sweeps.plot_*` module takes its wording from here
so that the figures read alike. What a figure says about its law comes from `law_of`.
"""
import math

import numpy as np

from sweeps import laws

LABEL = {"N": "parameters N", "D": "tokens D", "C": "training FLOPs C",
         "loss": "loss (nats/token)"}


def law_of(fit_obj: dict) -> laws.Law:
  """The fit's registered law; an unregistered name gets a law without hooks (drawn plainly)."""
  name = fit_obj.get("law")
  return laws.LAWS.get(name) or laws.Law(name=str(name), fit=None, bootstrap=None,
                                         extrapolate=None)


def sci(x) -> str:
  """1.0e12-style (no '+', no leading zeros in the exponent); 'n/a' when not finite."""
  if x is None or not np.isfinite(x):
    return "n/a"
  mantissa, exponent = f"{x:.1e}".split("e")
  return f"{mantissa}e{int(exponent)}"


def num(x) -> str:
  """A parameter value to 3 significant figures: 0.400, 995, 3590, 2.1e19, 1.2e-5."""
  if x is None or not isinstance(x, (int, float, np.floating)) or not np.isfinite(x):
    return "n/a"
  if x != 0 and not 1e-3 <= abs(x) < 1e5:
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
  if x == 0:
    return "0"
  if abs(x) >= 1000:
    return f"{x:.0f}" if abs(x) < 1e4 else f"{round(x, -2):.0f}"
  return f"{x:#.3g}".rstrip(".")


def _finite_interval(interval):
  if not interval or len(interval) != 2:
    return None
  try:
    lo, hi = (float(v) for v in interval)
  except (TypeError, ValueError):
    return None
  return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _symbol(key: str) -> str:
  return key.replace("alpha", "α").replace("beta", "β")


def param_lines(fit_obj: dict) -> list[str]:
  """'α = 0.391 [0.340, 0.451]' per parameter and derived quantity (no interval when the fit
  has none or it is not finite)."""
  intervals = fit_obj.get("intervals") or {}
  values = {**fit_obj.get("params", {}), **(fit_obj.get("derived") or {})}
  lines = []
  for key, value in values.items():
    text = f"{_symbol(key)} = {num(value)}"
    interval = _finite_interval(intervals.get(key))
    if interval:
      text += f"  [{num(interval[0])}, {num(interval[1])}]"
    lines.append(text)
  return lines


def interval_note(fit_obj: dict) -> str:
  boot = fit_obj.get("bootstrap") or {}
  if not boot.get("resamples"):
    return "no intervals (fit without bootstrap)"
  note = f"[ ]: {boot.get('level', 0.95):.0%} bootstrap intervals, {boot['resamples']} resamples"
  if boot.get("failed"):
    note += f" ({boot['failed']} failed)"
  return note


def quality_text(fit_obj: dict) -> str:
  quality = fit_obj.get("quality")
  return f"quality: {quality}" if quality else ""


def diagnostic_lines(fit_obj: dict, limit: int = 4) -> list[str]:
  """Codes of the diagnostics that are not merely informational (fit.json has the text)."""
  found = [d for d in fit_obj.get("diagnostics") or []
           if isinstance(d, dict) and d.get("level", "warn") not in ("info", "ok")]
  codes = [str(d.get("code", "?")) for d in found]
  lines = [f"! {c}" for c in codes[:limit]]
  if len(codes) > limit:
    lines.append(f"! … {len(codes) - limit} more (see fit.json)")
  return lines


def title(fit_obj: dict, what: str) -> str:
  parts = [f"{fit_obj['law']}: {what}", f"{fit_obj.get('n_runs', '?')} runs"]
  if fit_obj.get("quality"):
    parts.append(quality_text(fit_obj))
  return " · ".join(parts)


def info_text(fit_obj: dict) -> str:
  """The law's form, its parameters with intervals, and the fit's quality and diagnostics."""
  lines = list(law_of(fit_obj).form or [fit_obj["law"]])
  lines += [""] + param_lines(fit_obj) + [interval_note(fit_obj)]
  extra = [quality_text(fit_obj)] if fit_obj.get("quality") else []
  extra += diagnostic_lines(fit_obj)
  if extra:
    lines += [""] + extra
  return "\n".join(lines)


def _info_box(ax, fit_obj, loc="upper right", fontsize=8.5):
  x, ha = (0.98, "right") if "right" in loc else (0.02, "left")
  y, va = (0.98, "top") if "upper" in loc else (0.02, "bottom")
  ax.text(x, y, info_text(fit_obj), transform=ax.transAxes, ha=ha, va=va, fontsize=fontsize,
          bbox={"boxstyle": "round,pad=0.4", "facecolor": "white", "alpha": 0.85,
                "edgecolor": "0.7"}, zorder=10)

