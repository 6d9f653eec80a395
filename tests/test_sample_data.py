"""Checks for the project's own sample data (data/), written by scripts/make_sample_data.py."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
SCRIPT = REPO / "scripts" / "make_sample_data.py"

SFT_DIR = DATA / "finance_sft"
DPO_DIR = DATA / "finance_dpo"
KNOWLEDGE_DIR = DATA / "knowledge"


def _load_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            assert line.strip(), f"{path.name}:{lineno} is blank"
            row = json.loads(line)
            assert isinstance(row, dict), f"{path.name}:{lineno} is not an object"
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def sft() -> dict[str, list[dict]]:
    return {split: _load_jsonl(SFT_DIR / f"{split}.jsonl") for split in ("train", "val")}


@pytest.fixture(scope="module")
def dpo() -> dict[str, list[dict]]:
    return {split: _load_jsonl(DPO_DIR / f"{split}.jsonl") for split in ("train", "val")}


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _first_user(row: dict) -> str:
    if "prompt" in row:
        return row["prompt"]
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def _last_user(row: dict) -> str:
    if "prompt" in row:
        return row["prompt"]
    return [m["content"] for m in row["messages"] if m["role"] == "user"][-1]


# ---------------------------------------------------------------------------
# files and counts
# ---------------------------------------------------------------------------

def test_files_exist_and_parse(sft, dpo):
    for split in ("train", "val"):
        assert sft[split], f"finance_sft/{split}.jsonl is empty"
        assert dpo[split], f"finance_dpo/{split}.jsonl is empty"
    assert (DATA / "README.md").is_file()
    assert sorted(KNOWLEDGE_DIR.glob("*.md")), "no knowledge files"


def test_counts_meet_minimums(sft, dpo):
    n_sft = len(sft["train"]) + len(sft["val"])
    n_dpo = len(dpo["train"]) + len(dpo["val"])
    assert n_sft >= 340
    assert n_dpo >= 180
    assert 0.07 <= len(sft["val"]) / n_sft <= 0.14
    assert 0.08 <= len(dpo["val"]) / n_dpo <= 0.16


def test_total_size_is_small():
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total < 3 * 1024 * 1024


# ---------------------------------------------------------------------------
# SFT structure and mix
# ---------------------------------------------------------------------------

SFT_CATEGORIES = {"credit_card", "consumer_loan", "repayment_calc", "credit_report",
                  "fraud", "investment", "general"}


def test_sft_dialogue_structure(sft):
    for split, rows in sft.items():
        for i, row in enumerate(rows):
            where = f"finance_sft/{split}.jsonl row {i}"
            assert row.get("category") in SFT_CATEGORIES, where
            msgs = row["messages"]
            assert isinstance(msgs, list) and msgs, where
            for m in msgs:
                assert set(m) == {"role", "content"}, where
                assert m["role"] in {"system", "user", "assistant"}, where
                assert isinstance(m["content"], str) and m["content"].strip(), where
            body = msgs[1:] if msgs[0]["role"] == "system" else msgs
            assert all(m["role"] != "system" for m in body), f"{where}: system not first"
            assert len(body) >= 2 and len(body) % 2 == 0, where
            for j, m in enumerate(body):
                assert m["role"] == ("user" if j % 2 == 0 else "assistant"), f"{where}: roles do not alternate"
            assert body[-1]["role"] == "assistant", where


def test_sft_mix(sft):
    rows = sft["train"] + sft["val"]
    n = len(rows)
    multi = sum(1 for r in rows if sum(m["role"] == "user" for m in r["messages"]) > 1)
    system = sum(1 for r in rows if r["messages"][0]["role"] == "system")
    english = sum(1 for r in rows if not _has_cjk(_first_user(r)))
    assert 0.18 <= multi / n <= 0.35
    assert 0.35 <= system / n <= 0.65
    assert 0.05 <= english / n <= 0.2
    cats = {r["category"] for r in rows}
    assert cats == SFT_CATEGORIES
    assert max(sum(m["role"] == "user" for m in r["messages"]) for r in rows) <= 3


def test_sft_train_val_disjoint(sft):
    key = lambda r: json.dumps(r["messages"], ensure_ascii=False, sort_keys=True)  # noqa: E731
    train = [key(r) for r in sft["train"]]
    val = [key(r) for r in sft["val"]]
    assert len(set(train)) == len(train), "duplicate dialogue in train"
    assert len(set(val)) == len(val), "duplicate dialogue in val"
    assert not set(train) & set(val), "dialogue present in both train and val"
    # the split is by source item, so even the opening questions do not overlap
    assert not {_first_user(r) for r in sft["train"]} & {_first_user(r) for r in sft["val"]}


# ---------------------------------------------------------------------------
# DPO structure
# ---------------------------------------------------------------------------

def test_dpo_rows(dpo):
    plain = 0
    for split, rows in dpo.items():
        for i, row in enumerate(rows):
            where = f"finance_dpo/{split}.jsonl row {i}"
            if "prompt" in row:
                plain += 1
                assert "messages" not in row, where
                assert isinstance(row["prompt"], str) and row["prompt"].strip(), where
            else:
                msgs = row["messages"]
                assert msgs and msgs[-1]["role"] == "user", f"{where}: prompt must end with a user turn"
                body = msgs[1:] if msgs[0]["role"] == "system" else msgs
                for j, m in enumerate(body):
                    assert m["role"] == ("user" if j % 2 == 0 else "assistant"), where
                    assert isinstance(m["content"], str) and m["content"].strip(), where
            for k in ("chosen", "rejected"):
                assert isinstance(row[k], str) and row[k].strip(), f"{where}: empty {k}"
            assert row["chosen"] != row["rejected"], where
            assert isinstance(row.get("category"), str) and row["category"], where
    n = len(dpo["train"]) + len(dpo["val"])
    assert 0.1 <= plain / n <= 0.3


def test_dpo_train_val_disjoint(dpo):
    def key(r):
        prompt = r.get("prompt") or json.dumps(r["messages"], ensure_ascii=False, sort_keys=True)
        return (prompt, r["chosen"], r["rejected"])

    train = {key(r) for r in dpo["train"]}
    val = {key(r) for r in dpo["val"]}
    assert len(train) == len(dpo["train"]) and len(val) == len(dpo["val"])
    assert not train & val
    # split by scenario: the final user questions never overlap either
    assert not {_last_user(r) for r in dpo["train"]} & {_last_user(r) for r in dpo["val"]}


# ---------------------------------------------------------------------------
# arithmetic spot checks (independent re-computation)
# ---------------------------------------------------------------------------

ANNUITY_GIVEN = re.compile(r"本金 P = (\d+) 元，年利率 ([\d.]+)%.*?期数 n = (\d+)")
ANNUITY_RESULT = re.compile(r"每月还款额 M ≈ ([\d.]+) 元")
EP_TOTAL = re.compile(r"总利息 = P × r × \(n \+ 1\) ÷ 2 ≈ ([\d.]+) 元")


def _assistant_texts(sft):
    for row in sft["train"] + sft["val"]:
        if row["category"] == "repayment_calc":
            for m in row["messages"]:
                if m["role"] == "assistant":
                    yield m["content"]


def test_equal_installment_payment_is_correct(sft):
    checked = 0
    for text in _assistant_texts(sft):
        if "等额本息每个月的还款额相同" not in text:
            continue
        given, result = ANNUITY_GIVEN.search(text), ANNUITY_RESULT.search(text)
        assert given and result, text
        principal, annual_pct, n = int(given[1]), float(given[2]), int(given[3])
        monthly = annual_pct / 1200
        expected = principal * monthly / (1 - (1 + monthly) ** -n)  # standard annuity formula
        assert abs(float(result[1]) - expected) <= 0.006, (text, expected)
        checked += 1
    assert checked >= 10


def test_equal_principal_interest_is_correct(sft):
    checked = 0
    for text in _assistant_texts(sft):
        if "等额本金每月归还相同的本金" not in text:
            continue
        given, total = ANNUITY_GIVEN.search(text), EP_TOTAL.search(text)
        assert given and total, text
        principal, annual_pct, n = int(given[1]), float(given[2]), int(given[3])
        # sum the interest month by month on the declining balance
        expected = sum((principal - k * principal / n) * annual_pct / 1200 for k in range(n))
        assert abs(float(total[1]) - expected) <= 0.006, (text, expected)
        checked += 1
    assert checked >= 5


# ---------------------------------------------------------------------------
# knowledge passages
# ---------------------------------------------------------------------------

def test_knowledge_passages():
    files = sorted(KNOWLEDGE_DIR.glob("*.md"))
    assert 5 <= len(files) <= 8
    n_passages = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        sections = re.split(r"^## ", text, flags=re.M)[1:]
        assert sections, f"{path.name} has no passages"
        for sec in sections:
            heading, _, body = sec.partition("\n")
            body = body.strip()
            assert heading.strip() and body, f"{path.name}: empty passage {heading!r}"
            assert _has_cjk(body)
            sentences = [s for s in re.split(r"[。！？]", body) if s.strip()]
            assert 2 <= len(sentences) <= 5, f"{path.name}: {heading!r} has {len(sentences)} sentences"
            n_passages += 1
    assert n_passages >= 40


# ---------------------------------------------------------------------------
# the committed files are exactly what the script produces
# ---------------------------------------------------------------------------

def test_script_is_deterministic_and_matches_committed_data(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_sample_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path)])
    capsys.readouterr()
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated
    for rel in generated:
        assert (DATA / rel).read_bytes() == (tmp_path / rel).read_bytes(), (
            f"data/{rel} is stale; rerun `python scripts/make_sample_data.py`")
