"""Weighted straight-line fits in log-log space, batched over bootstrap resamples.

Shared by the IsoFLOP and envelope laws: y = k * x^e  <=>  log y = log k + e log x.
"""
import numpy as np


def fit_loglog(x_N, y_N, weights_RN):
  """Returns (log_k_R, exponent_R); NaN where a resample has < 2 distinct weighted x."""
  lx, ly = np.log(x_N), np.log(y_N)
  w = np.asarray(weights_RN, np.float64)
  sw = w.sum(-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    mx = (w * lx).sum(-1) / sw
    my = (w * ly).sum(-1) / sw
    dx = lx - mx[:, None]
    sxx = (w * dx * dx).sum(-1)
    exponent = (w * dx * (ly - my[:, None])).sum(-1) / sxx
    bad = ~(sxx > 1e-12 * np.maximum(1.0, sw))
  exponent = np.where(bad, np.nan, exponent)
  return np.where(bad, np.nan, my - exponent * mx), exponent


def parabolas(x_N, y_N, group_N, weights_RN, n_groups):
  """Weighted y = p0 + p1 x + p2 x^2 per group and resample: coefficients [R, G, 3].

  NaN where a group has fewer than 3 distinct weighted x values in that resample.
  """
  x_N3 = np.stack([np.ones_like(x_N), x_N, x_N ** 2], -1)
  out = np.full((weights_RN.shape[0], n_groups, 3), np.nan)
  for g in range(n_groups):
    sel = group_N == g
    w_RM = weights_RN[:, sel]
    x_M3 = x_N3[sel]
    xtwx = np.einsum("rm,mi,mj->rij", w_RM, x_M3, x_M3)
    xtwy = np.einsum("rm,mi,m->ri", w_RM, x_M3, y_N[sel])
    distinct = np.array([len(np.unique(x_N[sel][w > 0])) for w in w_RM])
    ok = distinct >= 3
    if ok.any():
      out[ok, g] = np.linalg.solve(xtwx[ok], xtwy[ok][..., None])[..., 0]
  return out


def allocation_laws(c_G, n_RG, d_RG, loss_RG, loss_E=0.0) -> dict:
  """Power laws N_opt = N_coef C^a, D_opt = D_coef C^b, loss = loss_E + loss_coef C^loss_exp
  through per-budget optima ([R resamples, G budgets]; NaN marks a missing optimum)."""
  w_RG = np.isfinite(n_RG).astype(float)
  fill = lambda x: np.where(w_RG > 0, np.nan_to_num(x, nan=1.0), 1.0)
  log_kn, a = fit_loglog(c_G, fill(n_RG), w_RG)
  log_kd, b = fit_loglog(c_G, fill(d_RG), w_RG)
  with np.errstate(invalid="ignore"):
    reducible_RG = np.where(np.asarray(loss_RG) > loss_E, np.asarray(loss_RG) - loss_E, np.nan)
  w_loss_RG = w_RG * np.isfinite(reducible_RG)
  log_kl, l_exp = fit_loglog(c_G, np.where(w_loss_RG > 0, reducible_RG, 1.0), w_loss_RG)
  return {"a": a, "b": b, "N_coef": np.exp(log_kn), "D_coef": np.exp(log_kd),
          "loss_coef": np.exp(log_kl), "loss_exp": l_exp,
          "loss_E": np.full_like(np.asarray(a, np.float64), loss_E)}


def loss_floor(c_G, loss_G, known=None, min_budgets=4):
  """(E, how) for the loss-at-optimum law L = E + k C^g: the known floor when there is one;
  else, with >= min_budgets optima, the E in [0, min L) that best straightens log(L - E)
  against log C (profile least squares on L); else 0 (a pure power law, which keeps falling
  forever: prescriptions far beyond the data then under-predict the loss)."""
  ok = np.isfinite(loss_G)
  if known:
    return float(known), "known floor of the data"
  if ok.sum() < min_budgets:
    return 0.0, (f"no irreducible term: {int(ok.sum())} budget optima cannot also fit one "
                 f"(needs >= {min_budgets})")
  c, loss = np.asarray(c_G)[ok], np.asarray(loss_G)[ok]
  grid = np.linspace(0.0, 0.995 * loss.min(), 400)
  sse, lx = [], np.log(c)
  for e in grid:  # judged on the loss itself: log(L - E) residuals are not comparable across E
    coef = np.polyfit(lx, np.log(loss - e), 1)
    sse.append(np.sum((e + np.exp(np.polyval(coef, lx)) - loss) ** 2))
  return float(grid[int(np.argmin(sse))]), "profiled over [0, min loss)"


def allocation(params: dict, c):
  """(N_opt, D_opt, loss at the optimum) at FLOPs c from `allocation_laws` params."""
  c = np.asarray(c, np.float64)
  return (params["N_coef"] * c ** params["a"], params["D_coef"] * c ** params["b"],
          params.get("loss_E", 0.0) + params["loss_coef"] * c ** params["loss_exp"])
