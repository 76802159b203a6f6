"""docs/results/README.md is generated from the JSON files beside it, and covers every one."""

import json
import shutil

import pytest

from experiments import results_readme as rr
from experiments._runs import run_name


def test_every_json_file_has_a_section():
    found = {p.name for p in rr.RESULTS.glob("*.json")}
    under_way = {p.name for p in (rr.RESULTS / rr.PARTIAL).glob("*.json")} - found
    assert found, f"no JSON files in {rr.RESULTS}"
    assert found | under_way == rr.covered_files()


def test_every_table_id_is_unique_and_every_source_is_covered():
    tables = rr.all_tables()  # raises on a shared id
    assert {"headline", "official", "causal"} <= set(tables)
    for headline in rr.HEADLINES:
        assert set(headline.sources) <= rr.covered_files()


def test_committed_readme_equals_the_generated_text():
    results = rr.load(rr.RESULTS)
    assert (rr.RESULTS / "README.md").read_text() == rr.render_readme(results), (
        "docs/results/README.md is stale: run python -m experiments.results_readme")


def test_generated_blocks_of_the_docs_are_current(capsys):
    assert rr.main(["--check"]) == 0, capsys.readouterr().err


def test_an_unknown_json_file_fails_with_its_name(tmp_path, capsys):
    folder = tmp_path / "results"
    shutil.copytree(rr.RESULTS, folder)
    (folder / "new_experiment.json").write_text('{"rows": []}')
    assert rr.main(["--dir", str(folder), "--docs"]) == 2
    err = capsys.readouterr().err
    assert "new_experiment.json" in err and len(err.strip().splitlines()) == 1
    assert (folder / "README.md").read_text() == (rr.RESULTS / "README.md").read_text()


def test_a_missing_json_file_fails_with_its_name(tmp_path, capsys):
    folder = tmp_path / "results"
    shutil.copytree(rr.RESULTS, folder)
    (folder / "causal.json").unlink()
    assert rr.main(["--dir", str(folder), "--docs"]) == 2
    assert "causal.json" in capsys.readouterr().err


def test_check_reports_a_stale_readme(tmp_path, capsys):
    folder = tmp_path / "results"
    shutil.copytree(rr.RESULTS, folder)
    (folder / "README.md").write_text("# Results\n")
    assert rr.main(["--dir", str(folder), "--docs", "--check"]) == 1
    assert "README.md" in capsys.readouterr().err
    assert rr.main(["--dir", str(folder), "--docs"]) == 0
    assert rr.main(["--dir", str(folder), "--docs", "--check"]) == 0


def test_blocks_are_filled_and_unknown_ids_refused():
    results = rr.load(rr.RESULTS)
    text = "a\n<!-- table: causal -->\nold\n<!-- /table -->\nb\n"
    out = rr.sync_blocks(text, results, "doc.md")
    assert "old" not in out and "| tokens |" in out and out.endswith("<!-- /table -->\nb\n")
    with pytest.raises(rr.ResultsError, match="nope"):
        rr.sync_blocks("<!-- table: nope -->\n<!-- /table -->", results, "doc.md")


def test_commands_use_todays_module_names():
    text = (rr.RESULTS / "README.md").read_text()
    for old in rr.RENAMED_MODULES:
        assert f"python -m {old} " not in text


def test_every_other_file_beside_the_json_is_linked_and_exists():
    beside = {name for key, e in rr.EXPERIMENTS.items() for name in e.beside
              if (rr.RESULTS / key).exists()}  # a comparison under way has none yet
    others = {p.name for p in rr.RESULTS.iterdir()
              if p.is_file() and p.suffix != ".json" and p.name != "README.md"}
    assert beside == others
    folders = {p.name for p in rr.RESULTS.iterdir() if p.is_dir()}
    assert folders <= {"partial"}


def test_partial_records_are_of_described_comparisons_in_progress():
    """`partial/NAME.json`: the finished runs of a comparison being rerun (experiments.compare
    writes it), for a section that exists; none is left once the whole comparison is in."""
    for path in (rr.RESULTS / "partial").glob("*"):
        assert path.suffix == ".json" and path.name in rr.covered_files(), path
        record = json.loads(path.read_text())
        assert record["partial"] is True and record["name"] == path.stem and record["runs"]
        if not (rr.RESULTS / path.name).exists():  # a comparison under way: it stands for it
            continue
        whole = json.loads((rr.RESULTS / path.name).read_text())
        names = {run_name(r) for r in whole["runs"]}
        assert (record["recipe"], record.get("dataset_version")) != (
            whole["recipe"], whole.get("dataset_version")) or not names.issuperset(
            run_name(r) for r in record["runs"]), (
            f"{path}: its runs are all in docs/results/{path.name}; remove the partial record")


def test_the_recipe_text_follows_the_epochs_in_the_files():
    """The shipped recipe's length and whether the comparison used it come from the JSON files,
    not from the text: a comparison run for longer than the shipped recipe says so."""
    results = rr.load(rr.RESULTS)
    recipe, compare = results["mnist_recipe.json"], results["mnist.json"]
    labels = [h.what(results) for h in rr.HEADLINES if callable(h.what)]
    assert any(f"as shipped ({recipe['epochs']} epochs, one seed)" in t for t in labels), labels
    longer = {**compare, "recipe": {**compare["recipe"], "num_epochs": recipe["epochs"] + 30}}
    same = {**compare, "recipe": {**compare["recipe"], "num_epochs": recipe["epochs"]}}
    facts = {name: rr._recipe_facts({**results, "mnist.json": data})["compare_budget"]
             for name, data in (("longer", longer), ("same", same))}
    longer_text = f"this recipe over {recipe['epochs'] + 30} epochs instead of {recipe['epochs']}"
    assert facts == {"longer": longer_text, "same": "this recipe"}


def test_the_plateau_wording_names_the_rows_still_moving():
    """The headline and the section text say which rows missed the plateau (to 0.01 point, so
    that a range just above the 0.5-point tolerance does not read as 0.5)."""
    results = rr.load(rr.RESULTS)
    data = results["mnist.json"]

    def with_ranges(*ranges):
        rows = [{**r, "plateau_range": x, "plateau_holds": x < 0.005}
                for r, x in zip(data["table"], ranges, strict=True)]
        return {**results, "mnist.json": {**data, "table": rows}}

    epochs = data["recipe"]["num_epochs"]
    assert rr._epochs_and_plateau(with_ranges(0.001, 0.002, 0.003, 0.004), "mnist.json") == (
        f"{epochs} epochs, every model at its plateau")
    moving = with_ranges(0.001, 0.0053, 0.003, 0.004)
    assert rr._epochs_and_plateau(moving, "mnist.json") == (
        f"{epochs} epochs, CRATE (MSSA) still moving")
    assert rr._epochs_and_plateau(with_ranges(0.01, 0.02, 0.03, 0.04), "mnist.json") == (
        f"{epochs} epochs, no model at its plateau")
    text = rr._plateau(moving["mnist.json"]["table"])
    assert text.startswith("not every row reached its plateau: the mean test accuracy of "
                           "CRATE (MSSA) moved by up to 0.53 points"), text
    assert [h for h in rr.HEADLINES if not isinstance(h.what, str)
            and "CRATE (MSSA) still moving" in h.what(moving)]


def test_the_mnist_section_counts_the_runs_a_partial_record_adds():
    """A comparison resumed with --runs-from rewrites the kept runs into its partial record:
    only the runs beyond the main file's are counted as new."""
    results = {k: v for k, v in rr.load(rr.RESULTS).items() if not k.startswith("partial/")}
    assert rr._mnist_facts(results)["rerun"] == ""
    kept = results["mnist.json"]["runs"][0]
    partial = {"partial": True, "runs": [kept, {**kept, "cells": [3, 3]}]}  # 3 x 3: not run
    facts = rr._mnist_facts({**results, "partial/mnist.json": partial})
    assert facts["rerun"] == (" More runs of this comparison are under way: 1 beyond this "
                              "file's finished so far (`partial/mnist.json`).")


def test_the_sweep_table_shows_the_finished_rows_of_a_sweep_under_way():
    """While the comparison with the m sweep is under way and mnist.json has no sweep, the sweep
    table shows the rows of the partial record whose every seed has finished, and says so; the
    main file's own sweep, once there, wins."""
    results = {k: v for k, v in rr.load(rr.RESULTS).items() if not k.startswith("partial/")}
    data = {**results["mnist.json"], "sweep": []}
    cbt = next(r for r in data["table"] if r["model"] == "cbt_nano")
    m4 = {**cbt, "cells": [2, 2], "representatives": 4}
    partial = {"partial": True, "runs": [], "sweep": [m4, cbt]}
    under_way = {**results, "mnist.json": data, f"{rr.PARTIAL}/mnist.json": partial}
    facts = rr._mnist_facts(under_way)
    assert facts["sweep_source"] == (
        " From `partial/mnist.json` while the sweep goes on: the values of m whose every seed "
        "has finished, with the train images/s of that comparison's own side-by-side timing.")
    retimed = {**under_way, f"{rr.PARTIAL}/mnist.json": {
        **partial, "sweep": [m4, {**cbt, "images_per_sec": 2 * cbt["images_per_sec"]}]}}
    assert rr._mnist_facts(retimed)["sweep_source"].endswith(
        f" timing (m = 64: {2 * cbt['images_per_sec']:,.0f} there, "
        f"{cbt['images_per_sec']:,.0f} in the table above, timed in another sitting).")
    assert facts["sweep"] == ""  # the sentence waits for m = 4, 16, 64 and 196
    body = rr._SWEEP.render(under_way).splitlines()[2:]
    assert [line.split(" | ")[0] for line in body] == ["| 4", "| 64"], body
    # a partial record without rows (one written before records had them), or none: no rows
    older = {**under_way, f"{rr.PARTIAL}/mnist.json": {"partial": True, "runs": []}}
    assert rr._SWEEP.render(older).splitlines()[2:] == []
    assert rr._mnist_facts(older)["sweep_source"] == ""
    done = {**under_way, "mnist.json": {**data, "sweep": [cbt]}}
    assert rr._mnist_facts(done)["sweep_source"] == ""
    assert [line.split(" | ")[0] for line in rr._SWEEP.render(done).splitlines()[2:]] == ["| 64"]


def _longer(results: dict, seeds: tuple[int, ...], *, partial: bool, gain: float) -> dict:
    """A record of CRATE's MNIST runs trained 100 epochs: mnist.json's runs of `seeds`, each
    `gain` more accurate; the whole file has its table row, the partial record none."""
    short = results["mnist.json"]
    runs = [{**r, "final_accuracy": r["final_accuracy"] + gain} for r in short["runs"]
            if r["model"] == "crate_nano" and r["seed"] in seeds]
    row = next(r for r in short["table"] if r["model"] == "crate_nano")
    record = {"benchmark": "experiments.compare", "name": "mnist_crate100", "runs": runs,
              "recipe": {**short["recipe"], "num_epochs": 100}, "machine": short["machine"],
              "command": "python -m experiments.compare --name mnist_crate100",
              "table": [], "sweep": []}
    if partial:
        return {**record, "partial": True}
    return {**record, "wall_seconds": 1.0, "runs_wall_seconds": 2.0,
            "table": [{**row, "plateau_range": 0.002, "plateau_holds": True}]}


def test_a_comparison_under_way_stands_for_its_file_until_it_ends(tmp_path, capsys):
    """A described comparison whose file is not written yet is described from its partial record
    (linked instead of the file), with the runs finished so far; the whole file replaces it."""
    folder = tmp_path / "results"
    shutil.copytree(rr.RESULTS, folder)
    (folder / rr.LONGER).unlink(missing_ok=True)
    (folder / rr.PARTIAL / rr.LONGER).unlink(missing_ok=True)
    results = {"mnist.json": json.loads((folder / "mnist.json").read_text())}
    (folder / rr.PARTIAL).mkdir(exist_ok=True)
    (folder / rr.PARTIAL / rr.LONGER).write_text(
        json.dumps(_longer(results, (0, 2), partial=True, gain=0.004)))
    assert rr.main(["--dir", str(folder), "--docs"]) == 0, capsys.readouterr().err
    text = (folder / "README.md").read_text()
    section = text[text.index("## Is CRATE still learning"):]
    section = section[:section.index("\n## ")]
    assert f"- [partial/{rr.LONGER}](partial/{rr.LONGER}): `python -m experiments.compare" \
        in section
    assert "Under way: 2 runs finished so far, from the partial record" in section
    assert "over the 2 runs finished so far" in section and "beside it" not in section
    assert "(+0.40 pt; per seed +0.4, +0.4)" in section and "Over seeds 0 and 2," in section
    assert "The mean curve's range is measured once every seed has finished" in section
    headline = next(line for line in rr.HEADLINE_TABLE.render(rr.load(folder)).splitlines()
                    if line.startswith("| MNIST-5k, 197"))
    crate = next(r for r in results["mnist.json"]["table"] if r["model"] == "crate_nano")
    assert f", CRATE {rr.accuracy(crate['final_accuracy'])} (at 100 epochs " in headline
    assert ", 2 seeds so far), " in headline
    assert f"[partial/{rr.LONGER}](docs/results/partial/{rr.LONGER})" in headline
    rows = [line for line in section.splitlines() if line.startswith("| 100 |")]
    assert len(rows) == 2  # the two runs; no row of the seeds' mean yet
    # The whole comparison written: its file, its row, no partial record.
    (folder / rr.PARTIAL / rr.LONGER).unlink()
    (folder / rr.LONGER).write_text(
        json.dumps(_longer(results, (0, 1, 2), partial=False, gain=-0.01)))
    assert rr.main(["--dir", str(folder), "--docs"]) == 0, capsys.readouterr().err
    text = (folder / "README.md").read_text()
    section = text[text.index("## Is CRATE still learning"):]
    section = section[:section.index("\n## ")]
    assert f"- [{rr.LONGER}]({rr.LONGER}): " in section and "Under way" not in section
    assert "[mnist_crate100.md](mnist_crate100.md), [mnist_crate100.png]" in text
    headline = rr.HEADLINE_TABLE.render(rr.load(folder))
    assert ", 3 seeds), ToST" in headline
    assert f"[{rr.LONGER}](docs/results/{rr.LONGER})" in headline
    assert "(-1.00 pt; per seed -1.0, -1.0, -1.0)" in text
    assert "The seeds' mean curve moves 0.20 pt over the last fifth of the 100 epochs: at its " \
        "plateau." in text
    # Neither the file nor its partial record: the file is missing.
    (folder / rr.LONGER).unlink()
    assert rr.main(["--dir", str(folder), "--docs"]) == 2
    assert rr.LONGER in capsys.readouterr().err


def test_the_shapes64_sections_name_the_version_their_files_were_measured_on():
    """Each shapes64 section names the version its file records; a partial record beside it
    (`partial/NAME.json`) adds how many runs of the rerun have finished; the central box is
    explained as a strong baseline only for the centred main shapes before 3.0.0."""
    results = {k: v for k, v in rr.load(rr.RESULTS).items() if not k.startswith("partial/")}
    for name, facts in (("shapes64.json", rr._shapes64_facts),
                        ("shapes64_seg.json", rr._seg_facts)):
        old = {**results[name], "dataset_version": "2.0.0"}
        new = {**old, "dataset_version": "3.0.0"}
        partial = {"partial": True, "dataset_version": "3.0.0", "runs": [{}, {}]}
        before = facts({**results, name: old})
        rerun = facts({**results, name: old, f"partial/{name}": partial})
        more = facts({**results, name: new, f"partial/{name}": partial})
        after = facts({**results, name: new})
        assert before["version"] == "2.0.0" and after["version"] == "3.0.0"
        assert before["rerun"] == after["rerun"] == "" and before["placement"] == ""
        assert rerun["rerun"] == (f" A rerun on shapes64 3.0.0 is under way: 2 runs finished so "
                                  f"far (`partial/{name}`).")
        assert more["rerun"] == (" More runs of this comparison are under way: 2 beyond this "
                                 f"file's finished so far (`partial/{name}`).")
        assert after["placement"] == " placed off centre"
        assert [h.what({**results, name: new}) for h in rr.HEADLINES
                if callable(h.what) and name in h.sources][0].startswith("shapes64 3.0.0")
    old = {**results["shapes64.json"], "dataset_version": "2.0.0"}
    assert "covers its centre" in rr._shapes64_facts({**results, "shapes64.json": old})[
        "center_note"]
    assert rr._shapes64_facts({**results, "shapes64.json": {
        **old, "dataset_version": "3.0.0"}})["center_note"] == ""


def _pico(row: dict, accuracy: float) -> dict:
    """A nano row of a compare table as its pico (the second size) with `accuracy`."""
    return {**row, "model": row["model"].replace("_nano", "_pico"), "params": row["params"] // 4,
            "gflops_per_image": row["gflops_per_image"] / 3,
            "final_accuracy": {**row["final_accuracy"], "mean": accuracy}}


def test_the_frontier_table_shows_the_second_size_as_it_finishes():
    """The pico rows (the second size of each family) come from shapes64.json once it has them,
    else from its partial record while they train; the sentences wait for all four families,
    and the ViT's lead at matched cost is said where it holds."""
    results = {k: v for k, v in rr.load(rr.RESULTS).items() if not k.startswith("partial/")}
    data = results["shapes64.json"]
    nano = {r["model"]: r for r in data["table"] if r["model"].endswith("_nano")}
    results = {**results, "shapes64.json": {**data, "table": list(nano.values())}}
    assert rr._frontier_rows(results) == []
    assert rr._frontier_facts(results)["frontier_source"] == (
        " No family has finished its every seed yet (0 pico runs so far).")
    cbt_pico = _pico(nano["cbt_nano"], 0.90)
    one = {"partial": True, "runs": [{**data["runs"][0], "model": "cbt_pico"}], "table": []}
    assert rr._frontier_facts({**results, "partial/shapes64.json": one})["frontier_source"] == (
        " No family has finished its every seed yet (1 pico run so far).")
    partial = {"partial": True, "dataset_version": data["dataset_version"], "runs": [],
               "table": [*nano.values(), cbt_pico]}
    under_way = {**results, "partial/shapes64.json": partial}
    body = rr.FRONTIER_TABLE.render(under_way).splitlines()[2:]
    gain = 100 * (nano["cbt_nano"]["final_accuracy"]["mean"] - 0.90)
    assert len(body) == 1 and body[0].startswith("| CBT | ") and f"| {gain:+.1f} pt |" in body[0]
    facts = rr._frontier_facts(under_way)
    assert facts["frontier_source"].startswith(" From `partial/shapes64.json` while the pico")
    assert facts["frontier"] == " The second size has finished for CBT so far."
    assert facts["frontier_loses"] == ""
    cbt = nano["cbt_nano"]["final_accuracy"]["mean"]
    for vit, loses in ((cbt + 0.01, True), (cbt - 0.01, False)):
        picos = [cbt_pico, *(_pico(nano[f"{k}_nano"], vit if k == "vit" else 0.9)
                             for k in ("crate", "tost", "vit"))]
        done = {**results, "shapes64.json": {**data, "table": [*nano.values(), *picos]}}
        facts = rr._frontier_facts(done)
        assert facts["frontier_source"] == ""
        assert facts["frontier"].startswith(" Doubling the width (pico to nano, second table) "
                                            f"moves the test accuracy by CBT {gain:+.1f}, ")
        versus = "above" if loses else "below"
        assert f"of CBT's nano, ends {versus} it" in facts["frontier"]
        assert bool(facts["frontier_loses"]) == loses
        assert len(rr.FRONTIER_TABLE.render(done).splitlines()) == 2 + 4


def test_a_stray_file_in_the_partial_folder_fails_with_its_name(tmp_path, capsys):
    folder = tmp_path / "results"
    shutil.copytree(rr.RESULTS, folder)
    (folder / "partial").mkdir(exist_ok=True)
    (folder / "partial" / "unknown.json").write_text("{}")
    assert rr.main(["--dir", str(folder), "--docs"]) == 2
    assert "partial/unknown.json: not the partial record" in capsys.readouterr().err


def test_the_preamble_says_where_the_numbers_ran():
    results = rr.load(rr.RESULTS)
    assert rr._backends(results) == "All ran on CPUs; no number here comes from a GPU."
    gpu = {"backend": "gpu", "device": "NVIDIA H100 80GB HBM3"}
    data = {**results["mnist.json"],
            "runs": [{**results["mnist.json"]["runs"][0], "machine": gpu}]}
    assert "accelerators (NVIDIA H100 80GB HBM3)" in rr._backends({**results, "mnist.json": data})


def test_every_official_row_has_its_own_case_name():
    """A block part is named as such, never taken for the inference of its preset and batch."""
    rows = [{"case": "layer", "N": 65}, {"case": "train", "preset": "cbt_tiny", "batch": 8},
            {"case": "infer", "preset": "cbt_tiny", "batch": 8},
            *({"case": "block", "preset": "cbt_tiny", "batch": 8, "N": 197, "part": part}
              for part in ("block", "norm"))]
    names = [rr._case(r) for r in rows]
    assert len(set(names)) == len(names)
    assert names[-1] == "CBT-T block, norm fwd+bwd, batch 8, N = 197"


def _picos_longer(data: dict, seeds: dict, *, gain: float, partial: bool,
                  name: str = "shapes64_pico100", rows: tuple[str, ...] = ()) -> dict:
    """shapes64's runs of `seeds` ({model: seeds}) trained 100 epochs, each `gain` more
    accurate; the whole file has the models' table rows, the partial record those of `rows`
    (the models whose every seed has finished)."""
    runs = [{**r, "final_accuracy": r["final_accuracy"] + gain, "steps": 24000}
            for r in data["runs"] if r["seed"] in seeds.get(r["model"], ())]
    record = {"benchmark": "experiments.compare", "name": name, "runs": runs,
              "recipe": {**data["recipe"], "num_epochs": 100, "eval_every_steps": 1200}}
    table = [{**r, "plateau_range": 0.003, "plateau_holds": True, "final_accuracy": {
        **r["final_accuracy"], "mean": r["final_accuracy"]["mean"] + gain}}
        for r in data["table"] if r["model"] in (rows if partial else seeds)]
    return {**record, "table": table, **({"partial": True} if partial else {})}


def test_the_picos_trained_longer_are_told_per_model_as_their_seeds_finish():
    """The shapes64 follow-up that trains every pico longer: each model's gain over the seeds
    both budgets have finished, its plateau once every seed has; the finished ones beside the
    picos still at the shared budget, then the picos against each other at the longer one."""
    results = {k: v for k, v in rr.load(rr.RESULTS).items() if not k.startswith("partial/")}
    data = results["shapes64.json"]
    nano = [r for r in data["table"] if r["model"].endswith("_nano")]
    accs = {"cbt": 0.90, "crate": 0.86, "tost": 0.91, "vit": 0.95}
    picos = [_pico(r, accs[r["model"].split("_")[0]]) for r in nano]
    for r in picos:
        r.update(plateau_range=0.006, plateau_holds=r["model"] in ("tost_pico", "vit_pico"))
    nano_runs = [r for r in data["runs"] if r["model"].endswith("_nano")]
    pico_runs = [{**r, "model": r["model"].replace("_nano", "_pico"), "final_accuracy": 0.9}
                 for r in nano_runs]
    base = {**data, "table": [*nano, *picos], "runs": [*nano_runs, *pico_runs]}
    results = {**results, "shapes64.json": base}
    results.pop(rr.NANO_LONGER.file, None)  # the nanos not yet trained longer
    name = rr.PICO_LONGER.file
    under_way = {**results, name: _picos_longer(base, {"cbt_pico": (0, 2)}, gain=0.02,
                                                partial=True)}
    facts = rr._pico_longer_facts(under_way)
    assert facts["moved"] == ("the mean test-accuracy curves of pico CBT (0.60 pt) and pico "
                              "CRATE (MSSA) (0.60 pt) still moved more than 0.5 pt over the last "
                              "fifth")
    assert facts["under_way"] == (" Under way: 2 runs finished so far, from the partial record "
                                  f"(`partial/{name}`).")
    assert facts["every"] == 5 and (facts["short"], facts["long"]) == (60, 100)
    assert facts["shows"].startswith("Over seeds 0 and 2, pico CBT ends at ")
    assert "after 100 epochs against " in facts["shows"] and "after 60 (+2.00 pt; per seed " \
        "+2.0, +2.0). The mean curve's range is measured once" in facts["shows"]
    assert facts["shows"].endswith("No run of pico CRATE (MSSA), pico ToST (TSSA) or pico "
                                   "softmax ViT has finished yet.")
    assert facts["loses"] == (
        "Until every pico has run 100 epochs, the frontier compares them at 60. Pico CBT at "
        "100 epochs (92.0% ± 0.0) is 6.0 points above pico CRATE (MSSA)'s 60-epoch "
        f"{rr.accuracy(picos[1]['final_accuracy'])}, 1.0 points above pico ToST (TSSA)'s "
        f"60-epoch {rr.accuracy(picos[2]['final_accuracy'])}, 3.0 points below pico softmax "
        f"ViT's 60-epoch {rr.accuracy(picos[3]['final_accuracy'])}.")
    two = {**results, name: _picos_longer(base, {"cbt_pico": (0, 2), "crate_pico": (0,)},
                                          gain=0.02, partial=True)}
    assert rr._pico_longer_facts(two)["loses"].endswith(
        "Between the picos run 100 epochs so far, pico CBT (92.0% ± 0.0) ends level with pico "
        "CRATE (MSSA) (92.0%, seed 0).")
    body = rr._PICO_RUNS.render(under_way).splitlines()[2:]
    assert [line.split(" | ")[:3] for line in body] == [
        ["| pico CBT", "60", str(s)] for s in range(3)] + [
        ["| pico CBT", "100", str(s)] for s in (0, 2)] + [
        [f"| pico {m}", "60", str(s)] for m in ("CRATE (MSSA)", "ToST (TSSA)", "softmax ViT")
        for s in range(3)]
    assert len(rr._PICO_TABLE.render(under_way).splitlines()) == 2 + 4  # the 60-epoch rows
    every = {f"{k}_pico": (0, 1, 2) for k in accs}
    done = {**results, name: _picos_longer(base, every, gain=-0.01, partial=False)}
    facts = rr._pico_longer_facts(done)
    assert facts["under_way"] == ""
    assert facts["shows"].count("The seeds' mean curve moves 0.30 pt over the last fifth of "
                                "the 100 epochs: at its plateau.") == 4
    order, matched = facts["loses"].split(". At about the cost of CBT's nano, ")
    assert order.startswith("At 100 epochs pico CBT (") and \
        order.endswith(") ends above pico CRATE (MSSA) (" + rr.accuracy(
            {**picos[1]["final_accuracy"], "mean": 0.85}) + "), below pico ToST (TSSA) (" +
            rr.accuracy({**picos[2]["final_accuracy"], "mean": 0.90}) + "), below pico "
            "softmax ViT (" + rr.accuracy({**picos[3]["final_accuracy"], "mean": 0.94}) + ")")
    cbt_nano = nano[0]
    assert cbt_nano["model"] == "cbt_nano" and cbt_nano["plateau_holds"]
    versus = rr._versus(0.94, cbt_nano["final_accuracy"]["mean"])
    assert matched == (
        "the pico softmax ViT (" + rr.accuracy({**picos[3]["final_accuracy"], "mean": 0.94}) +
        ", 100 epochs), with {:.2f}x the parameters and {:.2f}x the FLOPs of CBT's nano, ends "
        "{} it ({}, 60 epochs, at its plateau).".format(
            picos[3]["params"] / cbt_nano["params"],
            picos[3]["gflops_per_image"] / cbt_nano["gflops_per_image"], versus,
            rr.accuracy(cbt_nano["final_accuracy"])))
    gained = {**results, name: _picos_longer(base, every, gain=0.02, partial=False)}
    assert rr._pico_longer_facts(gained)["loses"].endswith(
        "at its plateau). A curve flat over the last fifth of 60 epochs was not a converged "
        "model: pico ToST (TSSA) (+2.0 pt) and pico softmax ViT (+2.0 pt) had passed that test "
        "and still gained at 100. The nanos were not trained longer, so they may gain too.")
    nanos_too = {**gained, rr.NANO_LONGER.file: {"runs": []}}
    assert rr._pico_longer_facts(nanos_too)["loses"].endswith(
        "and still gained at 100. The nanos' own runs of as many epochs are the next section's.")
    assert len(rr._PICO_TABLE.render(done).splitlines()) == 2 + 8
    # the file holds two whole picos and more runs train: the partial record's runs join them
    two_whole = _picos_longer(base, {"cbt_pico": (0, 1, 2), "crate_pico": (0, 1, 2)}, gain=0.02,
                              partial=False)
    more = {**results, name: two_whole,
            f"partial/{name}": _picos_longer(base, {"tost_pico": (0,)}, gain=0.01, partial=True)}
    facts = rr._pico_longer_facts(more)
    assert facts["under_way"] == (" Under way: 7 runs finished so far, from the partial record "
                                  f"(`partial/{name}`).")
    assert facts["shows"].count("at its plateau.") == 2
    assert "Over seed 0, pico ToST (TSSA) ends at " in facts["shows"]
    assert facts["shows"].endswith("No run of pico softmax ViT has finished yet.")
    hundred = [line.split(" | ")[:3] for line in rr._PICO_RUNS.render(more).splitlines()[2:]
               if line.split(" | ")[1] == "100"]
    assert hundred == [[f"| pico {m}", "100", str(s)] for m in ("CBT", "CRATE (MSSA)")
                       for s in range(3)] + [["| pico ToST (TSSA)", "100", "0"]]
    assert len(rr._PICO_TABLE.render(more).splitlines()) == 2 + 4 + 2
    del base["table"][4]  # shapes64.json without the pico CBT row
    with pytest.raises(rr.ResultsError, match="shapes64.json has no cbt_pico row"):
        rr._pico_longer_facts(done)


def test_the_nanos_trained_longer_meet_the_pico_vit_at_one_budget():
    """The nanos' follow-up: told per model as for the picos; the matched-cost sentence (the
    pico ViT beside CBT's nano, both at 100 epochs) as soon as CBT's nano has every seed, before
    the other nanos finish; the nano rows of the section's tables as they finish."""
    results = {k: v for k, v in rr.load(rr.RESULTS).items() if not k.startswith("partial/")}
    data = results["shapes64.json"]
    nano = [r for r in data["table"] if r["model"].endswith("_nano")]
    picos = [_pico(r, 0.9) for r in nano]
    for r in [*nano, *picos]:
        r.update(plateau_range=0.003, plateau_holds=True)
    nano_runs = [r for r in data["runs"] if r["model"].endswith("_nano")]
    pico_runs = [{**r, "model": r["model"].replace("_nano", "_pico")} for r in nano_runs]
    base = {**data, "table": [*nano, *picos], "runs": [*nano_runs, *pico_runs]}
    every_pico = {r["model"]: (0, 1, 2) for r in picos}
    name = rr.NANO_LONGER.file
    results = {**results, "shapes64.json": base,
               rr.PICO_LONGER.file: _picos_longer(base, every_pico, gain=0.05, partial=False)}
    one = {**results, name: _picos_longer(base, {"cbt_nano": (0,)}, gain=0.01, partial=True,
                                          name="shapes64_nano100")}
    facts = rr._nano_longer_facts(one)
    assert facts["moved"] == ("every nano's mean test-accuracy curve moved less than 0.5 pt "
                              "over the last fifth")
    assert facts["shows"].startswith("Over seed 0, nano CBT ends at ")
    assert facts["shows"].endswith("No run of nano CRATE (MSSA), nano ToST (TSSA) or nano "
                                   "softmax ViT has finished yet.")
    assert facts["loses"].startswith("Until every nano has run 100 epochs, the frontier "
                                     "compares them at 60. Nano CBT at 100 epochs (")
    assert "At about the cost" not in facts["loses"]  # CBT's nano has one seed of three
    cbt_done = {**results, name: _picos_longer(
        base, {"cbt_nano": (0, 1, 2), "crate_nano": (1,)}, gain=0.01, partial=True,
        name="shapes64_nano100", rows=("cbt_nano",))}
    facts = rr._nano_longer_facts(cbt_done)
    cbt = nano[0]
    assert cbt["model"] == "cbt_nano"
    vit_pico = {**picos[3], "final_accuracy": {**picos[3]["final_accuracy"], "mean": 0.95}}
    cbt_long = {**cbt, "final_accuracy": {**cbt["final_accuracy"],
                                          "mean": cbt["final_accuracy"]["mean"] + 0.01}}
    assert facts["loses"].endswith(
        " Between the nanos run 100 epochs so far, nano CBT ({}) ends {} nano CRATE (MSSA) "
        "({}, seed 1). At about the cost of CBT's nano, {}.".format(
            rr.accuracy(_seed_mean(cbt_done[name], "cbt_nano")),
            rr._versus(_seed_mean(cbt_done[name], "cbt_nano")["mean"],
                       _seed_mean(cbt_done[name], "crate_nano")["mean"]),
            rr.accuracy(_seed_mean(cbt_done[name], "crate_nano")),
            rr._matched(vit_pico, cbt_long, vit_note=", 100 epochs",
                        cbt_note=", 100 epochs")[1]))
    body = rr._NANO_TABLE.render(cbt_done).splitlines()[2:]
    assert [line.split(" | ")[:2] for line in body] == [["| CBT", "60"], ["| CBT", "100"]] + [
        [f"| {m}", "60"] for m in ("CRATE (MSSA)", "ToST (TSSA)", "softmax ViT")]
    whole = {**results, name: _picos_longer(base, {r["model"]: (0, 1, 2) for r in nano},
                                            gain=0.01, partial=False, name="shapes64_nano100")}
    facts = rr._nano_longer_facts(whole)
    assert facts["under_way"] == ""
    assert facts["loses"].startswith("At 100 epochs nano CBT (")
    assert facts["loses"].endswith("At about the cost of CBT's nano, {}. A curve flat over the "
                                   "last fifth of 60 epochs was not a converged model: nano CBT "
                                   "(+1.0 pt), nano CRATE (MSSA) (+1.0 pt), nano ToST (TSSA) "
                                   "(+1.0 pt) and nano softmax ViT (+1.0 pt) had passed that "
                                   "test and still gained at 100.".format(
                                       rr._matched(vit_pico, cbt_long, vit_note=", 100 epochs",
                                                   cbt_note=", 100 epochs")[1]))
    assert len(rr._NANO_TABLE.render(whole).splitlines()) == 2 + 8


def _seed_mean(record: dict, model: str) -> dict:
    """The seeds' mean accuracy of `model`'s runs in a follow-up record, as the section has it."""
    return rr._seed_stats([r["final_accuracy"] for r in record["runs"] if r["model"] == model])
