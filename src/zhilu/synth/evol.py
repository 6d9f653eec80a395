"""Evol-Instruct synthesis: evolve seed instructions in depth and in breadth, eliminate failed
evolutions, answer the survivors, keep the provenance of every row.

Paper: Xu et al. 2023, "WizardLM: Empowering Large Language Models to Follow Complex
Instructions", https://arxiv.org/abs/2304.12244. Per round, every instruction of the pool gets one
operation (drawn with a seed from ``operations``, so a rerun makes the same choices); the evolved
instruction passes the elimination rules (``zhilu.synth.filters``), is answered by the same
generator, and the answer is checked too. Survivors form the next round's pool; a parent whose
evolution failed goes back into the pool (``retry_failed``), as in the paper.

Outputs in ``out_dir``: ``evol.jsonl`` (chat rows + ``evol`` provenance: id, parent, root, operation,
round, domain), ``rejected.jsonl`` (with the stage and the reason), ``report.json``, and
``cache.jsonl``: every completion, written when it arrives, so a rerun in the same ``out_dir``
regenerates nothing that was finished and writes no duplicate.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from zhilu.data.clean import canonical, normalize_text
from zhilu.data.formats import READERS, RowError
from zhilu.errors import ConfigError, DataError
from zhilu.synth.evol_prompts import DOMAINS, OPERATIONS, EvolOperation
from zhilu.synth.filters import EvolFilter, strip_label
from zhilu.synth.store import Generator, JsonlStore, ResumableGenerator, request_key
from zhilu.utils.jsonl import iter_lines

log = logging.getLogger(__name__)

# Keyword cues for the domain of a seed without a ``domain`` field (checked in this order).
DOMAIN_CUES: list[tuple[str, re.Pattern]] = [
    ("code", re.compile(r"```|\bdef |\bclass |\bimport |\bfunction\b|\bSQL\b|python|java|c\+\+|代码|编程|程序|函数|算法|"
                        r"正则表达式|数据库", re.IGNORECASE)),
    ("finance", re.compile(r"贷款|信用卡|利率|利息|征信|理财|基金|股票|保险|还款|月供|分期|年化|借款|借贷|存款|银行|"
                           r"诈骗|逾期|额度|网贷|消费金融|APR|\bloan|\bcredit|interest rate|mortgage", re.IGNORECASE)),
    ("math", re.compile(r"方程|计算|求解|求出|概率|几何|证明|函数|积分|导数|数列|三角形|\bsolve\b|equation|integral|"
                        r"probability|\d+\s*[+\-*/×÷^]\s*\d+", re.IGNORECASE)),
]


def guess_domain(text: str) -> str:
    """``code``, ``finance``, ``math`` or ``general`` from keyword cues."""
    return next((name for name, cue in DOMAIN_CUES if cue.search(text)), "general")


@dataclass
class Instruction:
    """An instruction in the pool: a seed (round 0) or an evolved survivor."""

    id: str
    text: str
    domain: str
    root: str
    round: int = 0


def _seed_text(row: dict, fmt: str) -> str:
    if fmt == "instruction":
        text = row.get("instruction") or row.get("prompt") or row.get("question")
        if not isinstance(text, str):
            raise RowError("expected an 'instruction', 'prompt' or 'question' string")
        return f"{text}\n{row['input']}" if isinstance(row.get("input"), str) and row["input"].strip() else text
    parsed = READERS[fmt](dict(row))
    messages = parsed.prompt if hasattr(parsed, "prompt") else parsed
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise RowError("no user turn")
    return users[0]


SEED_FORMATS = ("instruction", *READERS)


def load_seeds(path: str | Path, format: str = "chat", limit: int | None = None, domain: str | None = None,
               on_error: str = "raise") -> list[Instruction]:
    """Seed instructions: the first user turn of chat/alpaca/sharegpt/preference rows, an
    ``instruction``/``prompt``/``question`` field (``format=instruction``), or lines of a ``.txt``.
    The domain is the row's ``domain`` field, else ``domain``, else ``guess_domain``. Duplicate
    seeds (same text up to spaces and punctuation) are read once."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"seeds file {p}: not found")
    if format not in SEED_FORMATS:
        raise ConfigError(f"seeds.format={format!r}: expected one of {', '.join(SEED_FORMATS)}")
    if domain is not None and domain not in DOMAINS:
        raise ConfigError(f"seeds.domain={domain!r}: expected one of {', '.join(DOMAINS)}")
    seeds, seen = [], set()
    for lineno, line in iter_lines(p):
        if not line.strip():
            continue
        try:
            if p.suffix == ".txt":
                row, text = {}, line
            else:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RowError(f"bad JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise RowError("row is not a JSON object")
                text = _seed_text(row, format)
        except RowError as exc:
            if on_error == "raise":
                raise DataError(f"{p}:{lineno}: {exc}") from None
            log.warning("seeds: skipped %s:%d: %s", p, lineno, exc)
            continue
        text = normalize_text(text)
        key = canonical(text)
        if not key or key in seen:
            continue
        seen.add(key)
        dom = row.get("domain") if row.get("domain") in DOMAINS else domain or guess_domain(text)
        sid = str(row.get("id", f"{p.stem}:{lineno}"))
        seeds.append(Instruction(sid, text, dom, sid))
        if limit and len(seeds) >= limit:
            break
    if not seeds:
        raise DataError(f"seeds file {p}: no seed instructions")
    return seeds


@dataclass
class RoundReport:
    round: int
    pool: int
    evolved: int = 0
    rejected_instruction: dict[str, int] = field(default_factory=dict)
    answered: int = 0
    rejected_answer: dict[str, int] = field(default_factory=dict)
    kept: int = 0


class Evolver:
    """Runs the evolution rounds (see the module docstring).

    Args:
        generator: a ``Generator`` (``LocalLM`` or ``OpenAIChatGenerator``).
        out_dir: outputs and the resumable cache.
        rounds: evolution rounds (the paper used 4).
        operations: names from ``zhilu.synth.evol_prompts.OPERATIONS`` (all by default).
        op_weights: sampling weight per operation name (default 1 each).
        filter: the elimination rules.
        answer_system_prompt: system message when answering (``None``: none).
        retry_failed: put a parent whose evolution failed back into the next round's pool.
    """

    def __init__(self, generator: Generator, out_dir: str | Path, rounds: int = 3,
                 operations: Sequence[str] | None = None, op_weights: Mapping[str, float] | None = None,
                 filter: EvolFilter | None = None, seed: int = 0, answer_system_prompt: str | None = None,
                 instruction_max_new_tokens: int = 512, answer_max_new_tokens: int = 1024,
                 retry_failed: bool = True, chunk_size: int = 64) -> None:
        names = list(operations or OPERATIONS)
        unknown = [n for n in names if n not in OPERATIONS]
        if unknown:
            raise ConfigError(f"evol.operations: unknown {unknown} (expected some of {', '.join(OPERATIONS)})")
        if rounds < 1:
            raise ConfigError(f"evol.rounds={rounds}: expected >= 1")
        weights = dict(op_weights or {})
        bad = [k for k in weights if k not in names]
        if bad:
            raise ConfigError(f"evol.op_weights: {bad} not in evol.operations")
        self.ops: list[EvolOperation] = [OPERATIONS[n] for n in names]
        self.weights = [float(weights.get(n, 1.0)) for n in names]
        if sum(self.weights) <= 0:
            raise ConfigError("evol.op_weights add up to 0")
        self.generator = generator
        self.out_dir = Path(out_dir)
        self.rounds = rounds
        self.filter = filter or EvolFilter()
        self.seed = seed
        self.answer_system_prompt = answer_system_prompt
        self.instruction_max_new_tokens = instruction_max_new_tokens
        self.answer_max_new_tokens = answer_max_new_tokens
        self.retry_failed = retry_failed
        self.gen_id = getattr(generator, "identity", generator.name)
        self.store = JsonlStore(self.out_dir / "cache.jsonl")
        self.runner = ResumableGenerator(generator, self.store, chunk_size)

    def choose(self, item: Instruction, round_: int) -> EvolOperation:
        rng = random.Random(f"{self.seed}:{item.id}:{round_}")
        return rng.choices(self.ops, weights=self.weights, k=1)[0]

    def evolve_prompt(self, item: Instruction, op: EvolOperation) -> list[dict]:
        return [{"role": "user", "content": op.prompt(item.text, item.domain)}]

    def answer_prompt(self, instruction: str) -> list[dict]:
        sys_msg = [{"role": "system", "content": self.answer_system_prompt}] if self.answer_system_prompt else []
        return sys_msg + [{"role": "user", "content": instruction}]

    def _key(self, what: str, messages: list[dict], max_new_tokens: int) -> str:
        return request_key(what, messages, generator=self.gen_id, max_new_tokens=max_new_tokens)

    def run(self, seeds: Sequence[Instruction]) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        pool = list(seeds)
        kept: list[dict] = []
        rejected: list[dict] = []
        rounds: list[RoundReport] = []
        per_op: dict[str, Counter] = defaultdict(Counter)
        for r in range(1, self.rounds + 1):
            if not pool:
                break
            rep = RoundReport(r, len(pool))
            plan = []
            for item in pool:
                op = self.choose(item, r)
                msgs = self.evolve_prompt(item, op)
                plan.append((item, op, f"{item.id}>{op.name}@{r}", msgs,
                             self._key(f"{item.id}>{op.name}@{r}:instruction", msgs, self.instruction_max_new_tokens)))
            texts = self.runner.run([(k, m) for *_, m, k in plan], self.instruction_max_new_tokens)
            survivors, failed = [], []
            for item, op, cid, _, key in plan:
                child = strip_label(texts[key])
                per_op[op.name]["tried"] += 1
                why = self.filter.check_instruction(item.text, child)
                if why:
                    rejected.append({"id": cid, "stage": "instruction", "reason": why, "instruction": child,
                                     "evol": self._provenance(item, op, r)})
                    rep.rejected_instruction[why] = rep.rejected_instruction.get(why, 0) + 1
                    failed.append(item)
                else:
                    survivors.append((item, op, cid, child))
            rep.evolved = len(survivors)
            answer_reqs = [(self._key(f"{cid}:answer", self.answer_prompt(child), self.answer_max_new_tokens),
                            self.answer_prompt(child)) for _, _, cid, child in survivors]
            answers = self.runner.run(answer_reqs, self.answer_max_new_tokens)
            next_pool = []
            for (item, op, cid, child), (akey, _) in zip(survivors, answer_reqs):
                answer = normalize_text(answers[akey])
                why = self.filter.check_answer(answer)
                if why:
                    rejected.append({"id": cid, "stage": "answer", "reason": why, "instruction": child,
                                     "answer": answer, "evol": self._provenance(item, op, r)})
                    rep.rejected_answer[why] = rep.rejected_answer.get(why, 0) + 1
                    failed.append(item)
                    continue
                kept.append({"id": cid, "messages": [{"role": "user", "content": child},
                                                     {"role": "assistant", "content": answer}],
                             "evol": self._provenance(item, op, r)})
                per_op[op.name]["kept"] += 1
                next_pool.append(Instruction(cid, child, item.domain, item.root, r))
            rep.answered, rep.kept = len(survivors), len(next_pool)
            rounds.append(rep)
            pool = next_pool + (failed if self.retry_failed else [])
            self._write(kept, rejected)
            log.info("evol round %d: pool %d, evolved %d, kept %d", r, rep.pool, rep.evolved, rep.kept)
        report = {
            "seeds": len(seeds), "rounds": [asdict(x) for x in rounds], "kept": len(kept), "rejected": len(rejected),
            "operations": {k: dict(v) for k, v in per_op.items()},
            "domains": dict(Counter(row["evol"]["domain"] for row in kept)),
            "generated": self.runner.generated, "reused_from_cache": self.runner.reused,
            "generator": self.gen_id, "out_dir": str(self.out_dir),
        }
        from zhilu.utils.io import write_json_atomic

        write_json_atomic(self.out_dir / "report.json", report)
        return report

    def _provenance(self, item: Instruction, op: EvolOperation, r: int) -> dict:
        return {"parent": item.id, "root": item.root, "operation": op.name, "kind": op.kind, "round": r,
                "domain": item.domain, "parent_instruction": item.text, "generator": self.gen_id}

    def _write(self, kept: list[dict], rejected: list[dict]) -> None:
        for name, rows in (("evol.jsonl", kept), ("rejected.jsonl", rejected)):
            path = self.out_dir / name
            tmp = path.with_name(name + ".tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            tmp.replace(path)


def format_report(report: Mapping[str, Any]) -> str:
    lines = [f"{'round':>5}{'pool':>7}{'evolved':>9}{'answered':>10}{'kept':>7}  eliminated", "-" * 72]
    for r in report["rounds"]:
        why = {**{f"instr: {k}": v for k, v in r["rejected_instruction"].items()},
               **{f"answer: {k}": v for k, v in r["rejected_answer"].items()}}
        lines.append(f"{r['round']:>5}{r['pool']:>7}{r['evolved']:>9}{r['answered']:>10}{r['kept']:>7}  "
                     + ("; ".join(f"{k} {v}" for k, v in why.items()) or "-"))
    ops = ", ".join(f"{k} {v.get('kept', 0)}/{v.get('tried', 0)}" for k, v in sorted(report["operations"].items()))
    lines.append(f"kept/tried per operation: {ops}")
    lines.append(f"kept {report['kept']} rows from {report['seeds']} seeds; "
                 f"{report['generated']} completions generated, "
                 f"{report['reused_from_cache']} reused from the cache")
    return "\n".join(lines)
