"""Batched L-BFGS: many independent problems (starts x bootstrap resamples) solved together.

Every law with a smooth objective goes through `minimize`, so there is one optimiser (optax's
L-BFGS with its zoom line search) and one stopping rule. Problems run in a fixed number of
vmapped lanes; a lane whose problem has converged is refilled from the queue between short
jitted chunks of iterations. A vmapped while_loop pays for its slowest member, so without the
refill a few slow starts would make all 4,500 starts iterate as long as they do; with it, the
program compiles once (one lane count) and the cost follows the total number of iterations.
"""
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# objective(theta_P, data, weights_N) -> scalar; `data` is a tuple of [N] arrays.
Objective = Callable[[jax.Array, tuple, jax.Array], jax.Array]


class _Lane(NamedTuple):
  theta_P: jax.Array
  state: optax.OptState
  grad_norm: jax.Array
  value_prev: jax.Array
  iteration: jax.Array
  done: jax.Array


def _optimizer(max_linesearch: int):
  return optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(
      max_linesearch_steps=max_linesearch, initial_guess_strategy="one"))


@functools.partial(jax.jit, static_argnames=("max_linesearch",))
def _init_lanes(theta_BP, max_linesearch):
  opt = _optimizer(max_linesearch)
  b = theta_BP.shape[0]
  inf_B = jnp.full((b,), jnp.inf, theta_BP.dtype)
  return _Lane(theta_BP, jax.vmap(opt.init)(theta_BP), inf_B, inf_B,
               jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool))


@functools.partial(jax.jit, static_argnames=("objective", "chunk", "max_linesearch"))
def _run_chunk(objective, lanes, data, weights_BN, chunk, max_iter, gtol, ftol, max_linesearch):
  """Advances every lane by up to `chunk` iterations (fewer if it converges)."""
  opt = _optimizer(max_linesearch)

  def solve(lane, weights_N):
    fun = lambda theta_P: objective(theta_P, data, weights_N)
    value_and_grad = optax.value_and_grad_from_state(fun)
    stop_at = jnp.minimum(lane.iteration + chunk, max_iter)

    def step(lane):
      value, grad_P = value_and_grad(lane.theta_P, state=lane.state)
      updates, state = opt.update(grad_P, lane.state, lane.theta_P, value=value, grad=grad_P,
                                  value_fn=fun)
      theta_P = optax.apply_updates(lane.theta_P, updates)
      new_value = optax.tree.get(state, "value")
      # Stop on a small gradient, a step that no longer lowers the objective (relative), a
      # non-finite objective, or the iteration cap.
      stalled = jnp.abs(value - new_value) <= ftol * jnp.abs(new_value)
      grad_norm = jnp.linalg.norm(grad_P)
      it = lane.iteration + 1
      done = ((grad_norm <= gtol) | (stalled & (it > 1)) | ~jnp.isfinite(new_value)
              | (it >= max_iter))
      return _Lane(theta_P, state, grad_norm, value, it, done)

    return jax.lax.while_loop(lambda l: ~l.done & (l.iteration < stop_at), step, lane)

  return jax.vmap(solve)(lanes, weights_BN)


@functools.partial(jax.jit, static_argnames=("objective",))
def _final_values(objective, theta_BP, data, weights_BN):
  value_B = jax.vmap(lambda th, w: objective(th, data, w))(theta_BP, weights_BN)
  return jnp.where(jnp.isfinite(value_B), value_B, jnp.inf)


def _in_blocks(fn, width, *arrays):
  """Applies fn to fixed-size row blocks (the last one padded), so one program serves all
  problem counts; returns the concatenated numpy pytree trimmed to the row count."""
  total = len(arrays[0])
  outs = []
  for start in range(0, total, width):
    idx = np.minimum(np.arange(start, start + width), total - 1)
    outs.append(jax.tree.map(np.array, fn(*(a[idx] for a in arrays))))
  return jax.tree.map(lambda *xs: np.concatenate(xs)[:total], *outs)


def minimize(objective: Objective, theta0_RSP: np.ndarray, data: tuple, weights_RN: np.ndarray,
             *, dtype=np.float64, max_iter: int = 200, gtol: float = 1e-9, ftol: float = 1e-10,
             max_linesearch: int = 8, chunk: int = 4):
  """Minimises objective for every (resample r, start s) pair.

  Args:
    objective: a module-level function (a static jit argument, so compiled programs are
      reused across calls with the same lane count, point count and dtype).
    theta0_RSP: starting parameters per resample and start.
    data: tuple of [N] float arrays shared by all resamples.
    weights_RN: per-resample point weights (bootstrap counts; zero for padding).
    dtype: float32 for a fast wide search, float64 to polish.
    ftol: stop when a step lowers the objective by less than ftol * |objective|.
  Returns:
    theta_RSP, value_RS (inf where the objective was not finite), iterations_RS, as numpy.
  """
  r, s, p = theta0_RSP.shape
  total = r * s
  # Two lane counts only (each compiles once): narrow for a few problems, since every lane
  # computes while any lane is still iterating, wide for grids and bootstraps.
  lanes = 32 if total <= 32 else 256
  with jax.enable_x64(True):
    data = tuple(jnp.asarray(x, dtype) for x in data)
    weights_BN = np.asarray(weights_RN, dtype)[np.repeat(np.arange(r), s)]
    # All bookkeeping on the host in numpy, and every jitted call sees `lanes` rows: refills
    # have varying sizes, and each new device shape would compile again.
    queue = _in_blocks(lambda th: _init_lanes(th, max_linesearch), lanes,
                       np.asarray(theta0_RSP, dtype).reshape(total, p))
    results = jax.tree.map(np.copy, queue)
    slot = np.minimum(np.arange(lanes), total - 1)  # which problem each lane holds
    live = np.arange(lanes) < total
    lanes_state = jax.tree.map(lambda x: x[slot], queue)
    lanes_state.done[~live] = True
    next_problem = min(lanes, total)
    while live.any():
      lanes_state = jax.tree.map(np.array, _run_chunk(
          objective, lanes_state, data, weights_BN[slot], chunk, max_iter, gtol, ftol,
          max_linesearch))
      finished = np.flatnonzero(lanes_state.done & live)
      for res_leaf, lane_leaf in zip(jax.tree.leaves(results), jax.tree.leaves(lanes_state)):
        res_leaf[slot[finished]] = lane_leaf[finished]
      # Refill finished lanes from the queue; once it is empty they idle (done stays True).
      refill = finished[:max(0, total - next_problem)]
      live[finished[len(refill):]] = False
      if refill.size:
        new = np.arange(next_problem, next_problem + refill.size)
        next_problem += refill.size
        slot[refill] = new
        for lane_leaf, queue_leaf in zip(jax.tree.leaves(lanes_state), jax.tree.leaves(queue)):
          lane_leaf[refill] = queue_leaf[new]

    value_B = _in_blocks(lambda th, w: _final_values(objective, th, data, w), lanes,
                         results.theta_P, weights_BN)
  return (results.theta_P.reshape(r, s, p).astype(np.float64), value_B.reshape(r, s),
          results.iteration.reshape(r, s))


def pad_length(n: int, minimum: int = 256) -> int:
  """Point arrays are padded (zero weight) to a power of two so that a fit and its refits on
  subsets (extrapolation check) usually share one compiled program."""
  return max(minimum, 1 << (n - 1).bit_length())


def search_then_polish(objective: Objective, theta0_RSP: np.ndarray, data: tuple,
                       weights_RN: np.ndarray, *, keep: int):
  """Optimises every start in float32, then polishes the `keep` best per resample in float64.

  float32 halves the cost of the wide search (its objective values are exact enough to rank
  starts); the float64 polish gives the digits that are reported. Returns per resample the
  best polished theta_RP and value_R, plus the float32 endpoints (theta_RSP, value_RS) so
  callers can reuse distinct local minima as warm starts.
  """
  # A short line search in the wide phase: every lane waits for the longest search among the
  # lanes, and the float64 polish (8 steps) repairs what a cut-short search leaves.
  theta_RSP, value_RS, _ = minimize(objective, theta0_RSP, data, weights_RN, dtype=np.float32,
                                    ftol=1e-6, gtol=1e-6, max_linesearch=4)
  keep = min(keep, theta0_RSP.shape[1])
  best_RK = np.argsort(value_RS, axis=1, kind="stable")[:, :keep]
  candidates_RKP = np.take_along_axis(theta_RSP, best_RK[..., None], axis=1)
  polished_RKP, polished_RK, _ = minimize(objective, candidates_RKP, data, weights_RN,
                                          dtype=np.float64)
  winner_R = np.argmin(polished_RK, axis=1)
  rows = np.arange(len(winner_R))
  return polished_RKP[rows, winner_R], polished_RK[rows, winner_R], theta_RSP, value_RS
