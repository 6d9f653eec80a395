"""The command lines: ``python -m zhilu.synth {evol,self_evolve}`` and ``python -m zhilu.data.clean``."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DIALOGUES, ROOT, TINY, write_jsonl
from zhilu.synth.__main__ import main


def test_usage_without_a_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["zhilu.synth"])
    assert exc.value.code == 2 and "usage: python -m zhilu.synth {evol,self_evolve}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["zhilu.synth", "evolve"])
    assert exc.value.code == 2


def run(args, cwd):
    env = {**os.environ, "ZHILU_ROOT": str(ROOT), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


TINY_MODEL = [f"model.config.{k}={v}" for k, v in TINY.items()]
FAST = ["generator.max_new_tokens=8", "generator.batch_size=4", "generator.device=cpu"]


@pytest.mark.slow
def test_evol_cli_with_the_local_model_resumes(tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"messages": m} for m in DIALOGUES])
    args = ["-m", "zhilu.synth", "evol", f"seeds.path={seeds}", f"out_dir={tmp_path / 'out'}", "evol.rounds=1",
            "evol.instruction_max_new_tokens=8", "evol.answer_max_new_tokens=8", *TINY_MODEL, *FAST]
    first = run(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["seeds"] == 4 and report["generated"] >= 4 and "kept/tried per operation" in first.stdout
    second = run(args, tmp_path)
    assert second.returncode == 0 and "0 completions generated" in second.stdout


@pytest.mark.slow
def test_self_evolve_cli_with_the_local_model(tmp_path):
    qs = write_jsonl(tmp_path / "q.jsonl", [
        {"id": "m1", "question": "个人征信不良信息保存几年？", "choices": ["3年", "5年", "7年", "10年"], "answer": "B"},
        {"id": "o1", "question": "信用卡免息期是多久？"}])
    args = ["-m", "zhilu.synth", "self_evolve", f"questions.path={qs}", f"out_dir={tmp_path / 'out'}",
            f"retriever.folder={ROOT / 'data' / 'knowledge'}", "self_evolve.select_fraction=1.0",
            "uncertainty.open.max_new_tokens=4", "self_evolve.answer_max_new_tokens=8", *TINY_MODEL, *FAST]
    res = run(args, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["questions"] == 2 and report["selected_uncertain"] == 2 and report["with_passages"] == 2
    assert "selected_uncertain" in res.stdout


@pytest.mark.slow
def test_clean_cli_reports_a_missing_file_in_one_line(tmp_path):
    res = run(["-m", "zhilu.data.clean", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl")], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nope.jsonl'}: data file not found"
