"""What a reviewer of a scaling-law paper checks, applied to every fit.

`check(fit, points, law, options)` returns diagnostics, each `{code, level, message}` with level
`info` | `warn` | `degenerate`; `quality(diagnostics)` is the worst level ("ok" when nothing
is above info). Checks (Besiroglu et al. 2024; Porian et al. 2024; Epoch's notebooks):
isoFLOP budgets that do not bracket their minimum, each named, or whose parabola misses
its runs (with the allocation exponent refit without it); exponents outside a plausible
range or at the start grid's bound; E below a known floor of the loss, or vanishing; too few
points per fitted parameter; an extrapolation check that could not be made or missed; wide
or failed bootstrap intervals. Which checks apply comes from the law (`sweeps.laws.Law`):
`isoflop_grid`, `allocates`, `n_params`, and its own `checks` (e.g. Approach 3's exponents and
E, `loss_exponents` and `irreducible_floor` below).
"""
import numpy as np

from sweeps import points as points_lib

LEVELS = ("info", "warn", "degenerate")
# Exponents of the loss terms: below ~0.05 a term is flat; the 4,500-start grid tops at 2.
LOSS_EXPONENT_RANGE = (0.05, 1.5)
# Allocation exponent a (N_opt ~ C^a): published values 0.46-0.73 (Hoffmann; Kaplan; Porian).
ALLOCATION_WARN = (0.3, 0.8)
ALLOCATION_DEGENERATE = (0.1, 0.9)
EXTRAPOLATION_WARN = {"loss": 0.02, "N_opt": 0.5}  # mean |relative error| on held-out runs
WIDE_A_INTERVAL = 0.3  # 95% interval of a wider than this: the allocation is not measured
FEW_POINTS_PER_PARAM = 3
E_UNIDENTIFIED = 0.25  # E's interval reaching below this share of E: E is not measured
# A budget whose parabola residuals (RMS, nats) exceed this many times the median budget's,
# and PARABOLA_MISFIT_NATS, is not parabola-shaped over its sizes: its vertex is biased.
PARABOLA_MISFIT = 3.0
PARABOLA_MISFIT_NATS = 0.01
FLOPS_PER_ND_SPREAD = 1.1  # max/min of the runs' C / ND above this: one k is an average


def diag(code, level, message, **extra) -> dict:
  assert level in LEVELS, level
  return {"code": code, "level": level, "message": message, **extra}


def quality(diagnostics) -> str:
  worst = max((LEVELS.index(d["level"]) for d in diagnostics), default=0)
  return "ok" if worst == 0 else LEVELS[worst]


def _budget_design(fit, points) -> list:
  """Bracketing of each isoFLOP budget (>= 3 sizes); other data is not an isoFLOP grid. A fit
  that records its `budgets` (it fits a line through their minima) drops the unbracketed."""
  from sweeps.laws import isoflop
  budgets = [b for b in isoflop.describe_budgets(points) if b["sizes"] >= 3]
  if not budgets:
    return [diag("not_isoflop", "info", "no FLOP budget has >= 3 model sizes: the design is "
                 "not an isoFLOP grid, so bracketing of the optimum is not checked")]
  out = []
  through_minima = "budgets" in fit
  bad = [b for b in budgets if not b["bracketed"]]
  for b in bad:
    out.append(diag("unbracketed_budget", "warn",
                    f"budget C={b['C']:.3g}: {b['sizes']} sizes N={b['N_range'][0]:.3g}.."
                    f"{b['N_range'][1]:.3g}, lowest loss at the {b['best']} size: the minimum is "
                    "not bracketed" + (" (dropped from the fit)" if through_minima
                                       else ""), C=b["C"]))
  good = len(budgets) - len(bad)
  if good == 0:
    out.append(diag("no_bracketed_budget", "degenerate",
                    f"none of the {len(budgets)} isoFLOP budgets brackets its loss minimum: the "
                    "compute-optimal size is not measured by these runs, so exponents and "
                    "allocations are artefacts of the functional form. Centre the sizes on "
                    "each budget's optimum (sweeps.design.centered_isoflop)."))
  elif through_minima and good < 3:
    out.append(diag("few_budgets", "warn",
                    f"only {good} budgets bracket their minimum: the allocation line has no "
                    "degrees of freedom left to test its power-law form (use >= 3)"))
  return out


def loss_exponents(fit, points) -> list:
  """A law with loss terms A/N^alpha, B/D^beta: both exponents in a plausible range."""
  out = []
  lo, hi = LOSS_EXPONENT_RANGE
  for key in ("alpha", "beta"):
    value = fit["params"][key]
    if not lo <= value <= hi:
      out.append(diag("exponent_out_of_range", "degenerate",
                      f"{key} = {value:.3g} is outside the plausible range [{lo}, {hi}] "
                      "(published LM fits: 0.28-0.37); the fit is not identified by the data",
                      param=key))
  return out


def _allocation_exponent(fit) -> list:
  p = {**fit["params"], **fit.get("derived", {})}
  if "a" not in p:
    return []
  a = p["a"]
  if not ALLOCATION_DEGENERATE[0] <= a <= ALLOCATION_DEGENERATE[1]:
    return [diag("allocation_exponent", "degenerate",
                 f"allocation exponent a = {a:.3g} (N_opt ~ C^a) is outside "
                 f"{list(ALLOCATION_DEGENERATE)}; published values are 0.46-0.73", param="a")]
  if not ALLOCATION_WARN[0] <= a <= ALLOCATION_WARN[1]:
    return [diag("allocation_exponent", "warn",
                 f"allocation exponent a = {a:.3g} is outside {list(ALLOCATION_WARN)} "
                 "(published values 0.46-0.73)", param="a")]
  return []


def irreducible_floor(fit, points) -> list:
  """A law with an irreducible loss E: above a known floor, measured, not vanishing."""
  e = fit["params"]["E"]
  out = []
  floor = points.floor
  if floor is not None:
    hi = (fit.get("intervals", {}).get("E") or [None, None])[1]
    if e < floor:
      covered = hi is not None and np.isfinite(hi) and hi >= floor
      out.append(diag("E_below_floor", "warn" if covered else "degenerate",
                      f"E = {e:.4g} is below the loss floor {floor:.4g} nats/token the runs "
                      "carry (the corpus's exact entropy): impossible for a true asymptote"
                      + (" (its interval reaches the floor)" if covered else "")
                      + "; refit with --e_floor=auto to bound E by it"))
  lo = (fit.get("intervals", {}).get("E") or [None, None])[0]
  if lo is not None and np.isfinite(lo) and lo < E_UNIDENTIFIED * e:
    out.append(diag("E_unidentified", "warn",
                    f"E = {e:.3g} but its interval reaches {lo:.3g}: the runs do not reach "
                    "far enough towards the asymptote to measure the irreducible loss, so "
                    "loss predictions beyond the data are unreliable (the isoFLOP law's "
                    "allocation does not need E)"))
  if e < 0.02 * float(np.min(points.loss)):
    out.append(diag("E_vanishing", "warn",
                    f"E = {e:.3g} is ~0 against losses of {np.min(points.loss):.3g}: the fit "
                    "found no irreducible loss, which real text always has; the power-law terms "
                    "absorb it and their exponents are biased"))
  return out


def loss_floor_at_zero(fit, points) -> list:
  """The isoFLOP law's loss at the optimum, L = loss_E + k C^g: a loss_E not taken from a
  known floor and found at 0 means the curve has no floor at all."""
  del points
  if fit.get("derived", {}).get("loss_E", 0.0) > 0 or "known" in fit.get("loss_E_source", ""):
    return []
  return [diag("loss_E_zero", "info",
               f"loss at the optimum has no irreducible term (loss_E = 0: "
               f"{fit.get('loss_E_source', 'not fitted')}), so L_opt = k C^loss_exp falls "
               "forever and under-predicts losses far beyond the fitted FLOPs; the "
               "allocation (a, b) does not use it; --law=chinchilla fits E itself")]


def parabola_misfit(fit, points) -> list:
  """IsoFLOP budgets whose parabola in log N misses their runs (residual RMS several times
  the typical budget's): over too wide a size range the profile is not parabolic (a badly
  undertrained large model rises steeply), so the budget's N_opt and loss_min are biased.
  How much that matters is measured: the allocation exponent refit without the budget. A
  shift within half of a's interval is info; beyond it, or with no interval, a warning."""
  budgets = fit.get("budgets") or {}
  if not budgets.get("parabola"):
    return []
  bucket = points_lib.buckets(points.C)
  rms = np.full(len(budgets["parabola"]), np.nan)
  worst = [None] * len(rms)
  for g, coef in enumerate(budgets["parabola"]):
    p = np.asarray([np.nan if v is None else v for v in coef], float)
    sel = bucket == g
    if np.all(np.isfinite(p)) and sel.any():
      x = np.log(points.N[sel])
      r = points.loss[sel] - (p[0] + p[1] * x + p[2] * x ** 2)
      rms[g], worst[g] = np.sqrt(np.mean(r ** 2)), (points.N[sel][np.argmax(np.abs(r))],
                                                    r[np.argmax(np.abs(r))])
  used = np.asarray(budgets.get("bracketed") or [False] * len(rms), bool) & np.isfinite(rms)
  if used.sum() < 3:
    return []
  typical = float(np.median(rms[used]))
  c_g = np.asarray(budgets["C"], float)
  n_g = np.asarray([np.nan if v is None else v for v in budgets["N_opt"]], float)
  a = fit.get("params", {}).get("a")
  lo, hi = (fit.get("intervals") or {}).get("a") or (None, None)
  out = []
  for g in np.flatnonzero(used):
    if not (rms[g] > PARABOLA_MISFIT * typical and rms[g] > PARABOLA_MISFIT_NATS):
      continue
    keep = used & (np.arange(len(rms)) != g)
    a_without = float(np.polyfit(np.log(c_g[keep]), np.log(n_g[keep]), 1)[0])
    bounded = lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi)
    shift = abs(a_without - a) if a is not None else np.inf
    level = "info" if bounded and shift <= (hi - lo) / 2 else "warn"
    n_far, r_far = worst[g]
    loss_min = (budgets.get("loss_min") or [None] * len(rms))[g]
    best = points.loss[bucket == g].min()
    out.append(diag(
        "parabola_misfit", level,
        f"budget C={c_g[g]:.3g}: its parabola in log N misses the runs (residual RMS "
        f"{rms[g]:.3g} nats vs {typical:.3g} typical; {r_far:+.3g} at N={n_far:.3g}), so its "
        f"vertex may be biased (loss_min {loss_min:.4g} vs best run {best:.4g}). Without it "
        f"a = {a_without:.3g} (fit {a:.3g}"
        + (f", interval [{lo:.3g}, {hi:.3g}])" if bounded else ")")
        + ". Narrow that budget's sizes around its minimum or add sizes near it.", C=c_g[g]))
  return out


def flops_per_nd_spread(fit, points) -> list:
  """Approach 3 allocates under C = k N D with one k, the runs' geometric mean of C / ND.
  Where attention or the logits are a sizeable share of the FLOPs, C / ND falls with N, so
  at budgets beyond the data (larger N_opt, smaller k) N_opt comes out low, by up to
  (k / min k)^a: said, with that bound, when the runs' C / ND spread past 10%."""
  ratio = points.C / (points.N * points.D)
  lo, hi = float(ratio.min()), float(ratio.max())
  k = (fit.get("derived") or {}).get("flops_per_nd")
  a = (fit.get("derived") or {}).get("a")
  if k is None or a is None or hi <= FLOPS_PER_ND_SPREAD * lo:
    return []
  order = np.argsort(points.N)
  trend = "falling" if ratio[order[-1]] < ratio[order[0]] else "rising"
  return [diag("flops_per_nd_spread", "info",
               f"C / ND ranges {lo:.3g}..{hi:.3g} over the runs ({trend} with N); the "
               f"allocation spends C = k N D at their mean k = {k:.3g}, so where k differs "
               f"(far from the data) N_opt is off by up to {((k / lo) ** a - 1) * 100:.0f}%; "
               "sweeps.prescribe spends a budget exactly with its shape's own FLOPs per token")]


def _points(fit, points, law) -> list:
  k = law.n_params
  if k and len(points) < FEW_POINTS_PER_PARAM * k:
    return [diag("few_points", "warn",
                 f"{len(points)} points for {k} fitted parameters (< {FEW_POINTS_PER_PARAM} "
                 "per parameter): intervals and extrapolation are fragile")]
  return []


def _extrapolation(fit) -> list:
  ex = fit.get("extrapolation", {})
  if ex.get("assessed") is False:
    return [diag("extrapolation_not_assessed", "warn",
                 f"extrapolation not assessed: {ex.get('reason')}")]
  err = ex.get("mean_abs_relative_error")
  limit = EXTRAPOLATION_WARN.get(ex.get("target"))
  if err is not None and limit is not None and err > limit:
    return [diag("extrapolation_error", "warn",
                 f"refit without the largest budget(s) predicts their {ex['target']} with a "
                 f"mean |relative error| of {err:.1%} (> {limit:.0%}): the law does not "
                 "extrapolate within its own data")]
  return []


def _intervals(fit) -> list:
  boot = fit.get("bootstrap")
  if not boot:
    return [diag("no_intervals", "warn", "no bootstrap intervals (--bootstrap=0): exponents "
                 "are reported without uncertainty")]
  out = []
  if boot["failed"] > 0.1 * boot["resamples"]:
    out.append(diag("bootstrap_failures", "warn",
                    f"{boot['failed']} of {boot['resamples']} bootstrap refits failed "
                    "(resamples that lost a budget's minimum or did not converge)"))
  a = fit.get("intervals", {}).get("a")
  if a and all(x is not None and np.isfinite(x) for x in a) and a[1] - a[0] > WIDE_A_INTERVAL:
    out.append(diag("wide_interval", "warn",
                    f"95% interval of a is [{a[0]:.3g}, {a[1]:.3g}]: the allocation exponent is "
                    "not pinned down by these runs (add budgets or sizes)", param="a"))
  return out


def _dropped(points) -> list:
  if not points.n_dropped:
    return []
  names = ", ".join(f"{r} ({why})" for r, why in points.dropped[:10])
  return [diag("rows_dropped", "info", f"{points.n_dropped} row(s) dropped as unusable: {names}"
               + (" ..." if len(points.dropped) > 10 else ""))]


def check(fit, points: points_lib.Points, law, options) -> list:
  from sweeps.laws import base  # the laws import numpy/jax; diagnostics alone need neither
  out = _budget_design(fit, points) if law.isoflop_grid else []
  for hook in law.checks:
    out += base.resolve(hook)(fit, points)
  out += _allocation_exponent(fit) if law.allocates else []
  out += _points(fit, points, law)
  out += _extrapolation(fit) + _intervals(fit) + _dropped(points)
  return out
