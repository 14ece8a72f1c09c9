"""Prescribe, then verify: train the prescribed config and compare its loss with the law's.

  python -m sweeps.verify --fit=DIR/fit.json --budget=C --store=DIR [--launcher=local|slurm]
      [--group=NAME] [--batch_rule=fitted|deepseek] [--seed=S] [--variant=V] [--dry_run]
      [--format=text|json] [slurm flags of sweeps.launch]

The prescription (sweeps.prescribe) becomes a one-run sweep named "verify" (the fitted runs'
config spec and base_config, the prescribed shape, batch and steps), trained through
sweeps.launch into STORE (idempotent: a finished run is not trained again). Its loss (the
column the fit used) is compared with the law's prediction for that very run:

  chinchilla        L(N, D) at the run's parameters and tokens; the interval from every
                    bootstrap sample of fit.json, at its bootstrap level
  isoflop/envelope  the compute-optimal loss at the run's training FLOPs

A single run carries seed noise the parameter interval lacks, so the verdict uses a band
that adds the fit's residual scatter (log space) in quadrature. The report goes to
STORE/verify-<budget>.json. Use a store apart from the fitted one (a refit of the fitted
store would include the verification run). Exit status: 0 when the run finished (whatever
the verdict), 1 when training failed or diverged, 2 on bad input.
"""
import json
import math
import os
import statistics
import sys

from absl import app, flags
import numpy as np

from experiments import logs
from sweeps import allocation, define, launch as launch_lib, plan as plan_lib, prescribe, rundir
from sweeps import flags as sweep_flags
from experiments.metrics import to_strict, write_json_atomic
from sweeps import laws

# --fit, --budget, --variant, --group, --batch_rule, --format are sweeps.prescribe's flags and
# --launcher, --rerun, --dry_run and the slurm flags are sweeps.launch's (absl
# flags are process-global). sweeps.fit owns another --seed (its bootstrap's): whichever module
# loads last holds the name, and a process only ever runs one of the two mains.
_SEED = flags.DEFINE_integer("seed", None, "verify: training seed of the run (default: the "
                             "fitted runs').", allow_override=True)
for _name in ("fit", "budget", "store", "variant", "group", "batch_rule", "format", "launcher",
              "rerun", "dry_run", "stale_minutes", "pin", "partition", "account",
              "nodes", "gpus_per_node", "cpus_per_run", "time_minutes", "poll_seconds"):
  flags.declare_key_flag(_name)  # listed by --helpshort beside --seed
DEFAULT_LEVEL = 0.95


def budget_text(budget: float) -> str:
  """1e21 -> '1e21', 6.34e8 -> '6.34e8' (file names)."""
  mantissa, _, exponent = f"{budget:.4g}".partition("e")
  return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def report_path(store: str, budget: float) -> str:
  return os.path.join(store, f"verify-{budget_text(budget)}.json")


def build_sweep(p: dict, seed=None) -> define.Sweep:
  """The one-run sweep of a prescription: base overrides, then the prescribed config."""
  run = dict(p["config"], **({"seed": seed} if seed is not None else {}))
  run[define.TAG] = f"C{define._num(p['budget'])}-N{define._num(p['model_params'])}"
  return define.Sweep(name="verify", config=p["config_spec"], base=dict(p["base_overrides"]),
                      runs=[run])


def predict(fit: dict, summary: dict, p: dict) -> dict:
  """The law's loss for the trained run: {'value', 'interval', 'at', 'how'}."""
  level = (fit.get("bootstrap") or {}).get("level", DEFAULT_LEVEL)
  lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
  loss_at = laws.get(fit["law"]).loss_at
  if loss_at is not None:
    n_key = "params" if prescribe.count_key(fit.get("n_kind", "params")) == "total" else \
        "params_non_embedding"
    n = float(summary.get(n_key) or p["model_params"])
    d = float(summary.get("tokens") or p["tokens"])
    value = float(loss_at(fit["params"], n, d))
    samples = (fit.get("bootstrap") or {}).get("samples")
    interval = [math.nan, math.nan]
    if samples:  # failed resamples are null in fit.json: NaN here, ignored
      params = {k: np.asarray(v, np.float64) for k, v in samples.items()}
      with np.errstate(all="ignore"):
        draws = loss_at(params, n, d)
      if np.isfinite(draws).any():
        interval = [float(np.nanpercentile(draws, lo_q)), float(np.nanpercentile(draws, hi_q))]
    return {"value": value, "interval": interval, "level": level, "at": {"N": n, "D": d},
            "how": "the law L(N, D) at the run's parameters and tokens"}
  c = float(summary.get("flops") or p["model_train_flops"])
  value, lo, hi = (float(x[0]) for x in allocation.allocate(fit, c)["loss"])
  return {"value": value, "interval": [lo, hi], "level": level, "at": {"C": c},
          "how": "the law's compute-optimal loss at the run's training FLOPs"}


def residual_scatter(fit: dict) -> tuple:
  """(std of log loss about the law or None, where it comes from)."""
  if laws.get(fit["law"]).loss_at is not None:
    r = np.asarray(fit.get("residuals") or [], np.float64)
    source = "std of the fit's log-loss residuals"
  else:
    # isoflop/envelope residuals are in log N_opt: the loss law's own scatter is the budgets'
    # minimum losses about it.
    table = fit.get("budgets") or fit.get("envelope") or {}
    c = np.asarray(table.get("C") or [], np.float64)
    loss = np.asarray(table.get("loss_min") or table.get("loss") or [], np.float64)
    r = np.full(0, np.nan)
    if c.size and c.size == loss.size:
      with np.errstate(all="ignore"):
        r = np.log(loss) - np.log(allocation.allocate(fit, c)["loss"][0])
    source = "std of the per-budget minimum losses about the fitted loss law, in log"
  r = r[np.isfinite(r)]
  if r.size < 3:
    return None, f"not available ({r.size} finite residuals in fit.json)"
  return float(np.std(r, ddof=1)), source


def loss_column(fit_top: dict) -> str:
  return ((fit_top.get("source") or {}).get("columns") or {}).get("loss") or "eval_loss"


def assess(fit: dict, summary: dict, p: dict, column: str = "eval_loss") -> dict:
  """Achieved vs predicted loss, the prediction band and the verdict for a finished run."""
  used = next((c for c in (column, "eval_loss", "final_loss")
               if isinstance(summary.get(c), (int, float)) and math.isfinite(summary[c])), None)
  achieved = float(summary[used]) if used else math.nan
  pred = predict(fit, summary, p)
  value, (lo, hi) = pred["value"], pred["interval"]
  sigma, source = residual_scatter(fit)
  z = statistics.NormalDist().inv_cdf(0.5 + pred["level"] / 2)
  has_interval = math.isfinite(lo) and math.isfinite(hi) and lo > 0 and hi > 0
  if has_interval or sigma is not None:
    # Parameter interval and seed/residual scatter are independent: add them in log space.
    noise = z * (sigma or 0.0)
    down = math.log(value / lo) if has_interval else 0.0
    up = math.log(hi / value) if has_interval else 0.0
    band = [value * math.exp(-math.hypot(max(down, 0.0), noise)),
            value * math.exp(math.hypot(max(up, 0.0), noise))]
    if has_interval:
      band = [min(band[0], lo), max(band[1], hi)]
  else:
    band = [math.nan, math.nan]
  if not math.isfinite(achieved) or not all(map(math.isfinite, band)):
    verdict = "not assessed"
  else:
    verdict = "within" if band[0] <= achieved <= band[1] else "outside"
  return {
      "loss_column": used, "loss_column_fitted": column, "achieved": achieved,
      "predicted": value, "prediction": pred["how"], "predicted_at": pred["at"],
      "interval": [lo, hi], "level": pred["level"],
      "within_interval": bool(has_interval and lo <= achieved <= hi),
      "scatter_log_std": sigma, "scatter_source": source, "band": band,
      "verdict": verdict, "relative_error": achieved / value - 1 if value else math.nan,
  }


def verify(fit_path, budget, store, *, group=None, batch_rule="fitted", variant=None,
           seed=None, launcher="local", rerun=rundir.DEFAULT_RERUN,
           stale_minutes=10.0, dry_run=False, out=sys.stdout, **launch_options) -> tuple:
  """(report or None for a dry run, exit status). Bad input raises ValueError."""
  if not store:
    raise ValueError("--store=DIR is required: the verification run and its report go there")
  fit_top = prescribe.load_fit(fit_path)
  p = prescribe.prescribe(fit_top, budget, group=group, batch_rule=batch_rule, variant=variant)
  fit, _ = prescribe.select_group(fit_top, p["group"])
  sweep = build_sweep(p, seed)
  (run,) = plan_lib.adopt(plan_lib.plan(sweep), store)  # the id launch will use
  if not math.isclose(run.flops, p["model_train_flops"], rel_tol=1e-6):
    raise ValueError(f"the planned run's FLOPs {run.flops:.4g} differ from the prescription's "
                     f"{p['model_train_flops']:.4g}: its config spec {sweep.config!r} does not "
                     "resolve like the prescription's base")
  warnings = list(p["warnings"])
  fitted_store = (fit_top.get("source") or {}).get("store")
  if fitted_store and os.path.realpath(fitted_store) == os.path.realpath(store):
    warnings.append(f"the verification run is written into the fitted store {store}: a refit "
                    "of it will include this run; use a separate --store")
  if dry_run:
    print(prescribe.format_text(p), file=out)
    launch_lib.launch(sweep, store, launcher, 1, rerun, True, stale_minutes, out=out,
                      **launch_options)
    return None, 0
  # One run, so parallel=1: more slots would only pin it to a share of the CPUs.
  states = launch_lib.launch(sweep, store, launcher, 1, rerun, False, stale_minutes,
                             out=sys.stderr, **launch_options)
  run_dir = os.path.join(store, run.run_id)
  summary = rundir.summary(run_dir)
  report = {"fit": os.path.abspath(fit_path), "law": fit["law"], "group": p["group"],
            "budget": budget, "store": os.path.abspath(store), "run_id": run.run_id,
            "run_dir": os.path.abspath(run_dir), "status": states[run.run_id],
            "run": {k: summary.get(k) for k in ("params", "params_non_embedding", "tokens",
                                                "flops", "wall_seconds")},
            "warnings": warnings, "prescription": p}
  if report["status"] == "done" and summary.get("status") == "done":
    report["run"]["flops_vs_budget"] = (summary.get("flops") or math.nan) / budget - 1
    report.update(assess(fit, summary, p, loss_column(fit_top)))
    code = 0
  else:
    report.update({"achieved": None, "verdict": "not assessed",
                   "error": f"the training run ended {report['status']}; see "
                            f"{os.path.join(run_dir, 'stderr.log')}"})
    code = 1
  report["report"] = report_path(store, budget)
  write_json_atomic(report["report"], report)
  return report, code


def format_report(r: dict) -> str:
  lines = [f"WARNING: {w}" for w in r["warnings"]]
  group = f" ({r['group']})" if r["group"] else ""
  lines.append(f"verify: {r['law']} fit{group}, budget {r['budget']:.4g} FLOPs -> "
               f"{r['run_id']} ({r['status']})")
  if r.get("achieved") is None:
    return "\n".join(lines + [f"error: {r['error']}", f"report -> {r['report']}"])
  run = r["run"]
  lo, hi = r["interval"]
  band_lo, band_hi = r["band"]
  pct = f"{r['level']:.0%}"
  sigma = r["scatter_log_std"]
  rows = [
      ("run", f"{run['params']:.4g} params, {run['tokens']:.4g} tokens, {run['flops']:.4g} "
              f"FLOPs (budget {run['flops_vs_budget']:+.1%})"),
      (f"achieved ({r['loss_column']})", f"{r['achieved']:.4f}"),
      ("predicted", f"{r['predicted']:.4f}  ({r['prediction']})"),
      (f"{pct} interval", f"[{lo:.4f}, {hi:.4f}] (bootstrap parameters)"
       if math.isfinite(lo) and math.isfinite(hi) else "- (fit.json has no bootstrap)"),
      (f"{pct} band", (f"[{band_lo:.4f}, {band_hi:.4f}]" if math.isfinite(band_lo) else "-") +
       (f" (+ residual scatter {sigma:.3g} in log)" if sigma is not None else
        " (no residual scatter)")),
      ("verdict", f"{r['verdict']} (achieved/predicted - 1 = {r['relative_error']:+.2%})"),
  ]
  width = max(len(k) for k, _ in rows) + 2
  lines += [f"  {k:<{width}}{v}" for k, v in rows]
  lines.append(f"report -> {r['report']}")
  return "\n".join(lines)


def main(argv):
  logs.setup()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}", exitcode=logs.EXIT_BAD_INPUT)
  if not prescribe._FIT.value or prescribe._BUDGET.value is None or not sweep_flags.STORE.value:
    raise app.UsageError("--fit=DIR/fit.json, --budget=FLOPS and --store=DIR are required",
                         exitcode=logs.EXIT_BAD_INPUT)

  def body():
    report, code = verify(
        prescribe._FIT.value, prescribe._BUDGET.value, sweep_flags.STORE.value,
        group=prescribe._GROUP.value, batch_rule=prescribe._BATCH_RULE.value,
        variant=prescribe._VARIANT.value, seed=_SEED.value, launcher=launch_lib._LAUNCHER.value,
        rerun=rundir.parse_rerun(launch_lib._RERUN.value),
        stale_minutes=launch_lib._STALE.value, dry_run=launch_lib._DRY_RUN.value,
        **launch_lib.flag_options())
    if report is not None:
      print(json.dumps(to_strict(report), indent=1, allow_nan=False)
            if prescribe._FORMAT.value == "json" else format_report(report))
    return code
  return logs.guard(body)


if __name__ == "__main__":
  app.run(main, flags_parser=logs.parse_flags)
