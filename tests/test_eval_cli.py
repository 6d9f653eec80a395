"""``eval.py`` end to end on the tiny folders: outputs, test-split submission, run-dir models, the
generation mode, CLI errors, and the training callback."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, TINY, compose_train, fast_overrides
from tests.test_eval_common import CEVAL_TINY, CMMLU_TINY, compose_eval, tiny_model_overrides
from zhilu.errors import ConfigError, DataError
from zhilu.eval.run import run

CEVAL_SUBJECTS = "[computer_network,college_physics,marxism,law,accountant]"


def _ceval(tmp_path, *extra):
    return compose_eval([f"benchmark.data_dir={CEVAL_TINY}", f"benchmark.subjects={CEVAL_SUBJECTS}",
                         *tiny_model_overrides(), *extra], tmp_path)


def test_ceval_val_run_writes_consistent_outputs(tmp_path):
    summary = run(_ceval(tmp_path, "benchmark.shots=2", "model_name=tiny"))
    preds = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 15 and {p["shots"] for p in preds} == {2}
    assert all(p["correct"] == (p["pred"] == p["answer"]) and len(p["letter_logprobs"]) == 4 for p in preds)
    rows = list(csv.DictReader((tmp_path / "subjects.csv").open(encoding="utf-8")))
    assert [r["subject"] for r in rows] == ["computer_network", "college_physics", "marxism", "law", "accountant"]
    for r in rows:
        mine = [p for p in preds if p["subject"] == r["subject"]]
        assert int(r["correct"]) == sum(p["correct"] for p in mine) and int(r["questions"]) == 3
    results = json.loads((tmp_path / "results.json").read_text())
    acc = {r["subject"]: 100 * int(r["correct"]) / 3 for r in rows}
    assert results["accuracy"]["avg"] == pytest.approx(sum(acc.values()) / 5)
    assert results["accuracy"]["hard"] == pytest.approx(acc["college_physics"])
    assert results["accuracy"]["STEM"] == pytest.approx((acc["computer_network"] + acc["college_physics"]) / 2)
    assert results["num_questions"] == 15 and results["questions_per_s"] > 0 and summary["model"] == "tiny"
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[0] == "| Model | STEM | Social Science | Humanities | Other | Avg | Avg(Hard) |"
    assert table[2].startswith("| tiny | ") and table[2].endswith(f" | {results['accuracy']['hard']:.2f} |")


def test_ceval_test_split_writes_the_submission_file(tmp_path):
    run(_ceval(tmp_path, "benchmark.split=test"))
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert set(sub) == {"computer_network", "college_physics", "marxism", "law", "accountant"}
    assert all(set(v) == {"0", "1"} and set(v.values()) <= set("ABCD") for v in sub.values())
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_scored"] == 0 and results["accuracy"]["avg"] is None
    assert (tmp_path / "table.md").read_text().splitlines()[2].endswith("| - | - | - | - | - | - |")


def test_a_run_dir_export_scores_like_the_model_it_was_saved_from(tmp_path, tokenizer):
    from zhilu.model import ModelBuilder

    builder = ModelBuilder(config={**TINY, "vocab_size": None}, seed=42)
    export = tmp_path / "myrun" / "export" / "merged"
    builder.build(tokenizer).save_pretrained(export)
    tokenizer.save_pretrained(export)
    run(_ceval(tmp_path / "a", "benchmark=cmmlu", f"benchmark.data_dir={CMMLU_TINY}",
               "benchmark.subjects=[agronomy,arts]", "seed=42"))
    run(_ceval(tmp_path / "b", "benchmark=cmmlu", f"benchmark.data_dir={CMMLU_TINY}",
               "benchmark.subjects=[agronomy,arts]", f"model.path={tmp_path / 'myrun'}"))
    a, b = ((tmp_path / d / "predictions.jsonl").read_text().splitlines() for d in "ab")
    torch.testing.assert_close(torch.tensor([json.loads(x)["letter_logprobs"] for x in a]),
                               torch.tensor([json.loads(x)["letter_logprobs"] for x in b]), atol=1e-4, rtol=0)
    assert json.loads((tmp_path / "b" / "results.json").read_text())["model"] == "myrun"
    assert (tmp_path / "b" / "table.md").read_text().splitlines()[0] == (
        "| Model | STEM | Social Science | Humanities | Other | China-specific | Average |")


def test_generation_mode_with_the_chat_template(tmp_path):
    run(_ceval(tmp_path, "mode=generate", "benchmark.chat=true", "benchmark.limit=1", "scorers.generate.max_new_tokens=4"))
    preds = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 5 and all("output" in p and "letter_logprobs" not in p for p in preds)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["scorer"] == "GenerateScorer" and results["max_length"] == TINY["max_position_embeddings"] - 4
    assert results["unparsed_answers"] == sum(p["pred"] is None for p in preds)


def test_bad_rows_and_modes_stop_the_run_before_the_model_loads(tmp_path):
    with pytest.raises(ConfigError, match="^mode='sample': expected one of loglik, generate$"):
        run(_ceval(tmp_path, "mode=sample"))
    data = tmp_path / "ceval"
    shutil.copytree(CEVAL_TINY, data)
    bad = data / "val" / "law_val.csv"
    bad.write_text("id,question,A,B,C,D,answer\n0,问题,a,b,c,d,Z\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"^{bad}:2: answer 'Z' is not one of A, B, C, D$"):
        run(_ceval(tmp_path, f"benchmark.data_dir={data}", "model.path=/nonexistent"))


def test_cli_missing_subject_file_is_a_one_line_error(tmp_path):
    data = tmp_path / "ceval"
    shutil.copytree(CEVAL_TINY, data)
    (data / "val" / "law_val.csv").unlink()
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"benchmark.data_dir={data}",
                        f"benchmark.subjects={CEVAL_SUBJECTS}", f"hydra.run.dir={tmp_path}/run"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: {data}/val/law_val.csv: missing val file for subject 'law'"
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "benchmark=cmmlu", "benchmark.subjects=[arts,nope]",
                        f"hydra.run.dir={tmp_path}/run2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "error: benchmark.subjects: unknown cmmlu subject 'nope'"


def test_training_callback_logs_benchmark_accuracy(sft_dir, tmp_path):
    from zhilu.train.run import train

    cfg = compose_train(fast_overrides(
        sft_dir, "callbacks=mcq_eval", f"callbacks.mcq_eval.benchmark.data_dir={CMMLU_TINY}",
        "callbacks.mcq_eval.benchmark.subjects=[agronomy,anatomy,ancient_chinese,arts]",
        "callbacks.mcq_eval.benchmark.limit=2", "callbacks.export.enabled=false", "callbacks.model_checkpoint=null",
        "adapter=lora", "trainer.max_steps=2",
    ), tmp_path)
    metrics = train(cfg)
    for key in ("val_cmmlu_avg", "val_cmmlu_china_specific", "val_cmmlu_stem", "val_cmmlu_avg_final"):
        assert 0.0 <= metrics[key] <= 100.0, key
    out = tmp_path / "mcq_eval" / "cmmlu_step000002"
    preds = (out / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 8
    assert (out / "table.md").read_text().startswith("| Model | STEM |")
