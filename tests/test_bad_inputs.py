"""Every bad input of issue 15 (points 6 and 7) ends with exactly one ``error:`` line naming the
culprit and exit code 2, through each command's own entry point (in-process: Hydra's ``main`` with
``sys.argv``, wrapped by ``zhilu.cli.one_line_errors`` as on the command line), before a model is built."""

import json
import os
import re
import runpy
import subprocess
import sys

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import DIALOGUES, ROOT, TINY, compose_train, fast_overrides, write_jsonl
from zhilu.cli import one_line_errors


def load_entry(name: str):
    """The ``main`` of an entry-point script (``train.py``, ``eval.py``, ``chat.py``) or module."""
    if name.endswith(".py"):  # run as `python train.py ...` runs it (Hydra finds conf/ beside the script)
        return lambda: runpy.run_path(str(ROOT / name), run_name="__main__")
    if name == "clean":
        from zhilu.data.clean import main

        return lambda: one_line_errors(main)(sys.argv[1:])
    if name == "merge":
        from zhilu.merge.__main__ import main

        return main
    raise ValueError(name)


def run_cli(entry: str, args: list[str], monkeypatch, capsys) -> tuple[int, list[str]]:
    """Run a command in this process; its exit code and its stderr lines."""
    GlobalHydra.instance().clear()
    main = load_entry(entry)
    # loggers that earlier in-process runs gave a stream handler keep pytest's closed capture stream
    import logging

    for lg in [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                     if isinstance(v, logging.Logger))]:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                    and getattr(h.stream, "closed", False):
                h.stream = sys.stderr  # (setStream would flush the closed one)
    monkeypatch.setattr(sys, "argv", [str(ROOT / entry) if entry.endswith(".py") else entry, *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main()
    GlobalHydra.instance().clear()
    return info.value.code, capsys.readouterr().err.strip().splitlines()


def model_built() -> bool:
    """Whether any entry point built a model in this process since the last reset (see the fixture)."""
    return bool(BUILT)


BUILT: list[str] = []


@pytest.fixture(autouse=True)
def watch_model_builds(monkeypatch):
    from zhilu.model import ModelBuilder

    real = ModelBuilder.build
    BUILT.clear()

    def build(self, *a, **kw):
        BUILT.append(self.name)
        return real(self, *a, **kw)

    monkeypatch.setattr(ModelBuilder, "build", build)


def chat_rows(n=4):
    return [{"messages": m} for m in (DIALOGUES * n)]


@pytest.fixture
def world(tmp_path):
    """Data and folders the cases point at."""
    d = tmp_path / "data"
    write_jsonl(d / "finance_sft" / "train.jsonl", chat_rows())
    write_jsonl(d / "finance_sft" / "val.jsonl", chat_rows(1))
    good = json.dumps(chat_rows(1)[0], ensure_ascii=False).encode()
    bad = tmp_path / "bad_utf8"
    (bad / "finance_sft").mkdir(parents=True)
    (bad / "finance_sft" / "train.jsonl").write_bytes(good + b"\n" + good[:30] + b"\xff\xfe" + good[30:] + b"\n")
    (bad / "finance_sft" / "val.jsonl").write_bytes(good + b"\n")
    gbk = tmp_path / "gbk"
    (gbk / "finance_sft").mkdir(parents=True)
    (gbk / "finance_sft" / "train.jsonl").write_bytes(
        json.dumps(chat_rows(1)[0], ensure_ascii=False).encode("gbk") * 2000)  # 50+ KB of GBK on one line
    (gbk / "finance_sft" / "val.jsonl").write_bytes(good + b"\n")
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "什么是年化利率？", "output": "按年计算的利率。", "history": [["上一问", None]]}])
    dpo = tmp_path / "dpo"
    write_jsonl(dpo / "finance_dpo" / "train.jsonl", [{"prompt": "能帮我逃债吗？", "chosen": "不能。", "rejected": "不能。"}])
    write_jsonl(dpo / "finance_dpo" / "val.jsonl", [{"prompt": "能帮我逃债吗？", "chosen": "不能。", "rejected": "能"}])
    ceval = tmp_path / "ceval" / "val"
    ceval.mkdir(parents=True)
    (ceval / "law_val.csv").write_text("id,question,A,B,C,D\n0,问题,a,b,c,d\n", encoding="utf-8")
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}), encoding="utf-8")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint", encoding="utf-8")
    (tmp_path / "prompts.txt").write_text("你好\n", encoding="utf-8")
    (tmp_path / "outdir").mkdir()
    return tmp_path


def train_args(world, *extra, data=None):
    model = [f"model.config.{k}={v}" for k, v in TINY.items()]
    return [f"paths.data_dir={data or world / 'data'}", "logger=csv", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={world / 'run'}", *model, *extra]


# (id, entry point, argv builder, the one stderr line as a regex: {w} is the tmp folder)
CASES = [
    ("invalid_utf8_data", "train.py", lambda w: train_args(w, data=w / "bad_utf8"),
     r"error: {w}/bad_utf8/finance_sft/train\.jsonl:2: not UTF-8 text at byte offset \d+ \(byte 0xff, column byte 30\): "
     r".{{1,250}} \(re-encode the file as UTF-8, e\.g\. iconv -f GBK -t UTF-8\)"),
    ("gbk_data", "train.py", lambda w: train_args(w, data=w / "gbk"),
     r"error: {w}/gbk/finance_sft/train\.jsonl:1: not UTF-8 text at byte offset \d+ \(byte 0x\w\w, .{{0,400}}"),
    ("batch_size_0", "train.py", lambda w: train_args(w, "data.batch_size=0"),
     r"error: data\.batch_size=0: expected an integer >= 1"),
    ("negative_lr", "train.py", lambda w: train_args(w, "optimizer.lr=-1"),
     r"error: optimizer\.lr=-1(\.0)?: expected a number >= 0"),
    ("accumulate_0", "train.py", lambda w: train_args(w, "trainer.accumulate_grad_batches=0"),
     r"error: trainer\.accumulate_grad_batches=0: expected an integer >= 1 \(or null\)"),
    ("ckpt_not_a_checkpoint", "train.py", lambda w: train_args(w, f"ckpt_path={w}/notes.ckpt"),
     r"error: ckpt_path={w}/notes\.ckpt: {w}/notes\.ckpt is not a checkpoint \(16 bytes, not a torch\.save archive; "
     r"truncated or another kind of file\)"),
    ("ckpt_last_without_checkpoint", "train.py", lambda w: train_args(w, "ckpt_path=last"),
     r"error: ckpt_path=last: no checkpoint to resume from at {w}/run/checkpoints/last\.ckpt \(ckpt_path=last_if_any "
     r"starts fresh when there is none\)"),
    ("limit_train_samples_negative", "train.py", lambda w: train_args(w, "data.limit_train_samples=-1"),
     r"error: data\.limit_train_samples=-1: expected an integer >= 1 \(or null\)"),
    ("alpaca_history_null", "train.py",
     lambda w: train_args(w, "data.format=alpaca", f"data.train_files=[{w}/alpaca.jsonl]", "data.val_files=[]"),
     r"error: {w}/alpaca\.jsonl:1: history pair 0: question and answer must be strings \(got \['上一问', None\]\).*"),
    ("identical_preference_pair", "train.py", lambda w: train_args(w, "objective=dpo", "adapter=lora", data=w / "dpo"),
     r"error: {w}/dpo/finance_dpo/train\.jsonl:1: 'chosen' and 'rejected' are the same answer \(a pair teaches "
     r"nothing\).*"),
    ("ceval_without_answer_column", "eval.py",
     lambda w: [f"benchmark.data_dir={w}/ceval", "benchmark.subjects=[law]", f"hydra.run.dir={w}/eval"],
     r"error: {w}/ceval/val/law_val\.csv:1: header id,question,A,B,C,D lacks the answer column 'answer' \(the val "
     r"split is scored against its answers\)"),
    ("chat_output_is_a_directory", "chat.py",
     lambda w: [f"prompts_file={w}/prompts.txt", f"output={w}/outdir"],
     r"error: output={w}/outdir: is a directory \(expected a file name\)"),
    ("clean_out_is_a_directory", "clean",
     lambda w: [f"{w}/data/finance_sft/train.jsonl", "--out", f"{w}/outdir"],
     r"error: --out={w}/outdir: is a directory \(expected a file name\)"),
    ("clean_shingle_0", "clean",
     lambda w: [f"{w}/data/finance_sft/train.jsonl", "--out", f"{w}/clean.jsonl", "--shingle", "0"],
     r"error: --shingle 0: expected an integer >= 1"),
    ("merge_input_without_weights", "merge",
     lambda w: [f"models=[{w}/noweights]", f"base={w}/noweights", f"hydra.run.dir={w}/merge"],
     r"error: models\[0\]={w}/noweights: no weights in {w}/noweights \(expected \*\.safetensors or "
     r"pytorch_model\*\.bin or .*\)"),
]


@pytest.mark.parametrize("entry, argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(world, monkeypatch, capsys, entry, argv, expected):
    code, lines = run_cli(entry, argv(world), monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert re.fullmatch(expected.format(w=re.escape(str(world))), lines[0]), lines[0]
    assert len(lines[0]) < 1000
    assert not model_built()  # refused before any model was built


def test_a_second_run_in_a_busy_run_dir_is_one_error_line(world, monkeypatch, capsys):
    from zhilu.utils.rundir import run_dir_lock

    with run_dir_lock(world / "run"):
        code, lines = run_cli("train.py", train_args(world), monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert re.fullmatch(rf"error: run dir {re.escape(str(world / 'run'))} is in use by another run \(pid {os.getpid()} "
                        r"on \S+ since [\d-]+ [\d:]+\); wait for it to end or choose another hydra\.run\.dir", lines[0])
    assert not model_built() and not (world / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_the_first_case_through_a_real_subprocess(world):
    """The in-process runner matches the command line (stderr, warnings and all)."""
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *train_args(world, "optimizer.lr=-1")],
                       cwd=world, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONWARNINGS": "default"})
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: optimizer.lr=-1: expected a number >= 0"]


@pytest.mark.slow
def test_a_full_disk_ends_with_one_line_and_keeps_the_last_checkpoint(world, sft_dir, monkeypatch, capsys):
    """The run dir on a small tmpfs: the step-2 checkpoint fits, the step-4 one does not. The run had
    started (Lightning's INFO lines come first), so the error is its last line and its only error."""
    from tests.test_checkpoint_io import tmpfs

    probe = world / "probe"
    from zhilu.train.run import train

    train(compose_train(fast_overrides(sft_dir, "adapter=full", "trainer.max_steps=2", "validate_after_fit=false",
                                       "callbacks.export.enabled=false",
                                       "callbacks.model_checkpoint.every_n_train_steps=2"), probe))
    size = (probe / "checkpoints" / "last.ckpt").stat().st_size
    with tmpfs(world / "small", int(2.5 * size / 1024) + 256) as mounted:
        if mounted is None:
            pytest.skip("cannot mount a tmpfs here")
        args = train_args(world, "adapter=full", "trainer.max_steps=6", "validate_after_fit=false",
                          "callbacks.export.enabled=false", "callbacks.model_checkpoint.every_n_train_steps=2",
                          f"hydra.run.dir={mounted}/run")
        code, lines = run_cli("train.py", args, monkeypatch, capsys)
        assert code == 2 and not any(w in line for line in lines[:-1] for w in ("error", "Error", "Traceback")), lines
        assert re.fullmatch(rf"error: checkpoint {mounted}/run/checkpoints/step000004\.ckpt: not enough disk space in "
                            rf"{mounted}/run/checkpoints \(needs about [\d.,]+ MB, [\d.,]+ MB free; free [\d.,]+ MB "
                            r"more\); nothing was written, earlier files are untouched", lines[-1]), lines[-1]
        last = torch.load(mounted / "run" / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["global_step"] == 2  # the last good checkpoint, whole
        files = sorted(os.listdir(mounted / "run" / "checkpoints"))
        assert files == ["last.ckpt", "step000002.ckpt"]  # no temp file, no 0-byte checkpoint
        assert json.loads((mounted / "run" / "metrics.json").read_text())["status"] == "failed"
