"""Checkpoints with orbax: asynchronous saves, the last N and the best kept, safe restore.

Layout: `WORKDIR/checkpoints/<step>/{state, meta}`; `state` is the `TrainState` (sharded arrays,
restored straight into the current mesh's shardings), `meta` a JSON dict (the input position, the
config, the eval metrics). Orbax writes into a temporary directory and renames it when complete,
so a process killed mid-write leaves no partial checkpoint behind as "latest".

`restore` checks the saved tree against the current model first: a checkpoint of another model is
an error that names the mismatched parameters and shapes; a checkpoint that cannot be read
(truncated, corrupted) is skipped with a warning in favour of the previous complete one, and
replaced when training reaches its step again.

Several processes: each writes its shards into the temporary directory, and process 0 renames it
only after all of them have finished (an Orbax barrier), so a checkpoint that one process did not
finish (killed, or its host lost) is never committed, and a restart never restores it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

__all__ = ["CheckpointMismatch", "Checkpointer"]

log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):
    """The checkpoint holds a different model or optimizer than the config builds."""


def _flat_shapes(tree) -> dict[str, tuple]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        if names and names[-1] == "value":  # an nnx.Variable's payload
            names.pop()
        out["/".join(names)] = tuple(getattr(leaf, "shape", ()))
    return out


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, minus its own look at JAX's preemption sync point: the loop asks once per
    step, in order, on every process (`train.loop`), and saves then. Orbax asks again from its
    finalize thread with the step it saved, which can be behind the loop's step; the counter JAX
    agrees on after a SIGTERM would then be one the loop has passed, and no process would stop."""

    def reached_preemption(self, step: int) -> bool:
        return False


class Checkpointer:
    """`CheckpointManager` for one run's `TrainState` plus JSON metadata."""

    def __init__(self, directory: str, *, keep: int, best_metric: str = "accuracy",
                 asynchronous: bool = True, read_only: bool = False):
        """`read_only`: only restore (the directory must exist; nothing is created or cleaned)."""
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        if read_only and not os.path.isdir(self.directory):
            raise FileNotFoundError(f"no checkpoints: {self.directory} is not a directory")
        preserve = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preserve, enable_async_checkpointing=asynchronous,
            cleanup_tmp_directories=not read_only, create=not read_only, read_only=read_only)
        self.manager = _Manager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The kept step with the highest finite ranking metric (None if none was ranked)."""
        ranked = []
        for step in self.all_steps():
            try:
                value = self.read_meta(step).get("ranking_metric")
            except Exception:  # an unreadable checkpoint ranks nowhere
                continue
            if value is not None:
                ranked.append((value, step))
        return max(ranked)[1] if ranked else None

    def save(self, step: int, state, meta: Mapping, metrics: Mapping | None = None) -> bool:
        """Start saving (asynchronously); finite `metrics` rank the checkpoint for "best"."""
        if metrics is not None and not all(math.isfinite(float(v)) for v in metrics.values()):
            metrics = None  # a non-finite evaluation never ranks as the best
        meta = {**meta, "ranking_metric": None if metrics is None else
                float(metrics[self.best_metric])}
        if step in self.manager.all_steps():  # one `restore` could not read, trained again
            self.manager.delete(step)
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)),
            metrics=dict(metrics) if metrics is not None else None, force=True)

    def read_meta(self, step: int) -> dict:
        """The JSON metadata saved with checkpoint `step`."""
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def _check_matches(self, step: int, target) -> None:
        try:
            saved = self.manager.item_metadata(step)["state"]
        except Exception:  # unreadable metadata: the restore below decides
            return
        if saved is None:
            return
        ours, theirs = _flat_shapes(target), _flat_shapes(saved)
        problems = []
        for key in sorted(set(ours) | set(theirs)):
            if key not in theirs:
                problems.append(f"{key}: missing from the checkpoint (model expects "
                                f"{ours[key]})")
            elif key not in ours:
                problems.append(f"{key}: in the checkpoint {theirs[key]}, not in the model")
            elif ours[key] != theirs[key]:
                problems.append(f"{key}: checkpoint {theirs[key]}, model {ours[key]}")
        if problems:
            shown = "; ".join(problems[:20])
            more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
            raise CheckpointMismatch(
                f"checkpoint {self.directory}/{step} does not match the model built from the "
                f"config: {shown}{more}")

    def restore(self, target) -> tuple[object, dict, int] | None:
        """The newest readable checkpoint as (state, meta, step), restored into `target`'s
        shapes and shardings (a tree of `jax.ShapeDtypeStruct`); None if there is none."""
        for step in reversed(self.all_steps()):
            self._check_matches(step, target)
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                  meta=ocp.args.JsonRestore()))
            except CheckpointMismatch:
                raise
            except Exception as e:  # truncated or corrupted files
                log.warning("checkpoint %s/%d cannot be restored (%s: %s); falling back to the "
                            "previous one", self.directory, step, type(e).__name__,
                            str(e).splitlines()[0] if str(e) else "")
                continue
            return restored["state"], dict(restored["meta"]), step
        return None
