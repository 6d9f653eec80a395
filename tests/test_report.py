"""``python -m zhilu.report``: hand-made run dirs give hand-computed means/stds; failures stay visible."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from zhilu.report import (
    Run, build_table, find_run_dirs, load_run, main, mean_std, runs_from_wandb, to_latex, to_markdown,
)


def make_run(root: Path, name: str, adapter: str, seed: int, metrics: dict | None,
             losses: list[tuple[int, float]] = ()) -> Path:
    """A run dir as train.py leaves it (``metrics`` None: the job died before writing one)."""
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"adapter={adapter}", f"seed={seed}"]))
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"adapter": adapter}}}}))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if losses:
        (d / "csv").mkdir()
        rows = ["epoch,step,train/loss,val/loss"]
        rows += [f"0,{s},{v},," if i % 2 == 0 else f"0,{s},,{v}," for i, (s, v) in enumerate(losses)]
        (d / "csv" / "metrics.csv").write_text("\n".join(r.rstrip(",") for r in rows) + "\n")
    return d


def finished(adapter: str, **kw) -> dict:
    base = {"adapter": adapter, "status": "finished", "trainable_params": 100, "total_params": 1000}
    return {**base, **kw}


@pytest.fixture
def sweep(tmp_path) -> Path:
    """lora x2 and dora x3 finished, full 1 finished + 1 failed, badam failed twice (one without metrics.json)."""
    root = tmp_path / "multirun"
    make_run(root, "0_lora_seed1", "lora", 1, finished("lora", train_time_s=10.0, val_loss_final=2.0,
                                                        tokens_per_s=100.0), [(1, 3.0), (2, 2.6), (4, 2.4)])
    make_run(root, "1_lora_seed2", "lora", 2, finished("lora", train_time_s=14.0, val_loss_final=2.5,
                                                        tokens_per_s=130.0), [(1, 3.1), (2, 2.7)])
    for i, (t, score) in enumerate([(20.0, 30.0), (22.0, 40.0), (27.0, 50.0)]):
        make_run(root, f"{2 + i}_dora_seed{i + 1}", "dora", i + 1,
                 finished("dora", train_time_s=t, val_loss_final=2.0, val_cmmlu_avg_final=score))
    make_run(root, "5_full_seed1", "full", 1, finished("full", train_time_s=50.0, trainable_params=1000))
    make_run(root, "6_full_seed2", "full", 2, {"adapter": "full", "status": "failed", "train_time_s": 3.0,
                                              "error": "RuntimeError: CUDA out of memory\nTraceback ..."})
    make_run(root, "7_badam_seed1", "badam", 1, {"status": "failed", "error": "ConfigError: bad switch_mode"})
    make_run(root, "8_badam_seed2", "badam", 2, None)
    return root


def test_means_and_sample_stds_are_hand_computed(sweep):
    table = build_table([load_run(d) for d in find_run_dirs([sweep])])
    rows = {r.method: r for r in table.rows}
    assert list(rows) == ["lora", "dora", "full", "badam"]  # order of first appearance (job order)
    lora, dora, full = rows["lora"].cells, rows["dora"].cells, rows["full"].cells
    assert lora["train_time_s"].mean == pytest.approx(12.0)
    assert lora["train_time_s"].std == pytest.approx(math.sqrt(8))  # (10-12)^2+(14-12)^2 = 8, / (2-1)
    assert lora["val_loss"].mean == pytest.approx(2.25)
    assert lora["val_loss"].std == pytest.approx(math.sqrt(0.125))
    assert lora["tokens_per_s"].std == pytest.approx(math.sqrt(450))
    assert dora["train_time_s"].mean == pytest.approx(23.0)
    assert dora["train_time_s"].std == pytest.approx(math.sqrt(13))  # (9+1+16)/2
    assert dora["cmmlu_avg"].mean == pytest.approx(40.0) and dora["cmmlu_avg"].std == pytest.approx(10.0)
    assert lora["cmmlu_avg"].mean is None  # only dora has the score
    assert lora["trainable_pct"].mean == pytest.approx(10.0)
    # the failed full run is counted but not averaged: one value, no std
    assert full["train_time_s"].mean == 50.0 and full["train_time_s"].std is None
    assert rows["full"].status == "1 of 2 failed" and rows["lora"].status == "ok"
    assert rows["badam"].status == "failed" and rows["badam"].cells["train_time_s"].mean is None


def test_markdown_csv_latex_and_plots(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    md = (out / "table.md").read_text()
    assert md == capsys.readouterr().out
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert "CMMLU (%)" in header and "Gen tokens/s" not in header  # no run has generation speed
    lora = next(line for line in lines if line.startswith("| lora "))
    assert "| 2 | ok |" in lora and "12.0 ± 2.8" in lora and "2.250 ± 0.354" in lora
    badam = next(line for line in lines if line.startswith("| badam "))
    assert "| failed |" in badam and "—" in badam
    assert "ConfigError: bad switch_mode" in md and "no metrics.json" in md
    assert "RuntimeError: CUDA out of memory" in md and "Traceback" not in md  # first line only

    with (out / "table.csv").open() as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert float(rows["dora"]["train_time_s_mean"]) == pytest.approx(23.0)
    assert float(rows["dora"]["train_time_s_std"]) == pytest.approx(math.sqrt(13))
    assert rows["full"]["finished"] == "1" and rows["full"]["runs"] == "2" and rows["full"]["seeds"] == "1,2"
    assert rows["badam"]["status"] == "failed" and rows["badam"]["train_time_s_mean"] == ""

    tex = (out / "table.tex").read_text()
    assert r"12.0 $\pm$ 2.8" in tex and r"badam (failed)" in tex and r"CMMLU (\%)" in tex
    for png in ("loss_curves.png", "time_memory.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_column_is_left_out_when_no_run_has_it(tmp_path):
    make_run(tmp_path, "0", "lora", 1, finished("lora", train_time_s=1.0))
    table = build_table([load_run(tmp_path / "0")])
    assert "cmmlu_avg" not in [c.name for c in table.columns]
    assert "CMMLU" not in to_markdown(table) and "CMMLU" not in to_latex(table)


def test_method_and_seed_come_from_hydra_when_metrics_json_is_missing(sweep):
    run = load_run(sweep / "8_badam_seed2")
    assert (run.method, run.seed, run.status) == ("badam", 2, "failed")


def test_loss_curves_are_read_from_the_csv_log(sweep):
    run = load_run(sweep / "0_lora_seed1")
    assert run.curves["train/loss"] == [(1, 3.0), (4, 2.4)] and run.curves["val/loss"] == [(2, 2.6)]


def test_running_status_counts_as_not_finished(tmp_path):
    make_run(tmp_path, "0", "lora", 1, {"adapter": "lora", "status": "running", "train_time_s": 5.0})
    (row,) = build_table([load_run(tmp_path / "0")]).rows
    assert row.status == "running" and row.cells["train_time_s"].mean is None


def test_run_dirs_are_found_in_job_order_and_not_inside_runs(tmp_path):
    for i in (10, 2, 1):
        make_run(tmp_path / "sweep", f"{i}_lora", "lora", i, finished("lora"))
    (tmp_path / "sweep" / "2_lora" / "export").mkdir()
    make_run(tmp_path / "sweep" / "2_lora", "nested", "x", 0, finished("x"))  # e.g. a copied run inside a run
    names = [p.name for p in find_run_dirs([tmp_path / "sweep"])]
    assert names == ["1_lora", "2_lora", "10_lora"]


def test_mean_std_of_one_and_none():
    assert (mean_std([4.0]).mean, mean_std([4.0]).std) == (4.0, None)
    assert mean_std([]).mean is None
    assert mean_std([1.0, 2.0, 3.0, 4.0]).std == pytest.approx(math.sqrt(5 / 3))


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nope")])
    assert e.value.code == 2 and "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "empty")])
    assert e.value.code == 2 and "no runs found" in capsys.readouterr().err


class FakeWandbRun:
    def __init__(self, rid, state, summary, config, history):
        self.id, self.name, self.state = rid, rid, state
        self.summary, self.config, self._history = summary, config, history

    def scan_history(self, keys):
        return [row for row in self._history if all(k in row for k in keys)]


class FakeApi:
    def __init__(self, runs):
        self._runs = runs
        self.calls = []

    def runs(self, path, filters):
        self.calls.append((path, filters))
        return self._runs


def test_wandb_runs_become_the_same_records():
    api = FakeApi([
        FakeWandbRun("a", "finished", {"adapter": "dora", "status": "finished", "train_time_s": 3.0, "_step": 9},
                     {"seed": 1}, [{"trainer/global_step": 5, "train/loss": 2.0}, {"trainer/global_step": 9,
                                                                                      "val/loss": 1.5}]),
        FakeWandbRun("b", "crashed", {"adapter": "dora", "status": "running"}, {"seed": 2}, []),
    ])
    runs = runs_from_wandb("me/zhilu", group="method_ablation", api=api)
    assert api.calls == [("me/zhilu", {"group": "method_ablation"})]
    assert [(r.method, r.seed, r.status) for r in runs] == [("dora", 1, "finished"), ("dora", 2, "failed")]
    assert runs[0].curves == {"train/loss": [(5, 2.0)], "val/loss": [(9, 1.5)]}
    assert "_step" not in runs[0].metrics
    (row,) = build_table(runs).rows
    assert row.status == "1 of 2 failed" and row.cells["train_time_s"].mean == 3.0


def test_runs_need_no_files_to_tabulate():
    runs = [Run("x", "m", 1, metrics={"train_time_s": 1.0}), Run("y", "m", 2, metrics={"train_time_s": 3.0})]
    (row,) = build_table(runs).rows
    assert row.cells["train_time_s"].text("{:.1f}") == "2.0 ± 1.4"
