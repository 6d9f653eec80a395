"""Uncertainty-driven retrieval self-evolution (the ZhiLu-2 model card's data method).

1. Score the model's uncertainty on a question set (``zhilu.synth.uncertainty``).
2. For the most uncertain questions, search for knowledge (``zhilu.synth.retrieval``).
3. Ask again with the passages in the prompt; keep the cases where the uncertainty fell by a
   threshold or the predicted letter flipped (``KeepRule``).
4. From the kept cases write knowledge-injection pre-training text (the passages, cleaned, once
   each) and instruction data: the question without the passages, answered from the knowledge by
   the generator; both ready for a mixture config (``format: text`` and ``format: chat``).

Related: retrieval-augmented generation (Lewis et al. 2020, https://arxiv.org/abs/2005.11401)
and active retrieval when the model is unsure (Jiang et al. 2023, FLARE,
https://arxiv.org/abs/2305.06983); here the retrieved knowledge becomes training data.

Outputs in ``out_dir``: ``knowledge.jsonl`` (``{"text", "source", "id", "questions"}``),
``instructions.jsonl`` (chat rows with a ``self_evolve`` provenance field), ``cases.jsonl`` (every
selected question: uncertainties, predictions, passages, decision), ``report.json``, and the
resumable caches ``scores.jsonl`` and ``cache.jsonl`` (a rerun recomputes nothing finished).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from zhilu.data.clean import canonical, normalize_text
from zhilu.errors import ConfigError
from zhilu.synth.filters import EvolFilter
from zhilu.synth.questions import Question
from zhilu.synth.retrieval import Passage, Retriever
from zhilu.synth.store import Generator, JsonlStore, ResumableGenerator, request_key
from zhilu.synth.uncertainty import Estimate, KeepRule, Uncertainty, context_block

log = logging.getLogger(__name__)

GROUNDED_SYSTEM = ("你是“智鹿”消费金融助手。请依据给出的资料准确、简洁地回答问题，必要时说明理由。"
                   "回答中不要提到“资料”“参考资料”这些字眼，直接陈述知识。")
REFERENCE_WORDS = ("参考资料", "资料中", "资料显示", "根据资料", "上述资料", "根据以上", "the reference", "the passage")

_MD = [(re.compile(r"^\s{0,3}#{1,6}\s*", re.M), ""), (re.compile(r"^\s*(?:[-*+]|\d+[.)、])\s+", re.M), ""),
       (re.compile(r"\*\*(.+?)\*\*|__(.+?)__"), r"\1\2"), (re.compile(r"`([^`]*)`"), r"\1"),
       (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"), (re.compile(r"^\s*>\s?", re.M), ""),
       (re.compile(r"^\s*\|?\s*:?-{3,}.*$", re.M), "")]


def clean_passage(p: Passage) -> str:
    """Plain text of a passage (Markdown marks removed, normalised), its title as the first line."""
    text = p.text
    for pattern, repl in _MD:
        text = pattern.sub(repl, text)
    title = normalize_text(p.title.replace(" / ", "·")) if p.title else ""
    body = normalize_text(text)
    return f"{title}\n{body}" if title and not body.startswith(title) else body


def grounded_messages(q: Question, passages: Sequence[Passage], letter: str | None) -> list[dict]:
    ask = f"{context_block(passages)}问题：{q.display()}"
    if q.is_mcq and letter:
        ask += f"\n\n正确答案是 {letter}。请先用一两句话说明理由，最后一行写“答案：{letter}”。"
    return [{"role": "system", "content": GROUNDED_SYSTEM}, {"role": "user", "content": ask}]


class SelfEvolver:
    """Runs steps 1-4 (see the module docstring).

    Args:
        scorer: the model whose uncertainty is measured (a ``LocalLM``, or a backend with
            ``choice_logprobs``/``generate_with_entropy``/``generate`` as the estimators need).
        generator: writes the knowledge-grounded answers (often the same model, or a bigger one by HTTP).
        retriever: ``BM25Retriever`` (default) or ``HTTPRetriever``.
        uncertainty: ``Uncertainty(mcq=..., open=...)``.
        rule: the keep/drop rule.
        select_fraction / select_top_k / min_uncertainty: which questions are "most uncertain":
            the top ``select_fraction`` (or ``select_top_k``) by uncertainty, within each kind
            (multiple choice, open: their scales differ), above ``min_uncertainty``.
        use_gold: for multiple choice with a known answer, the instruction data states the gold
            letter (else the prediction made with knowledge).
    """

    def __init__(self, scorer: Any, generator: Generator, retriever: Retriever, uncertainty: Uncertainty,
                 out_dir: str | Path, rule: KeepRule | None = None, select_fraction: float | None = 0.3,
                 select_top_k: int | None = None, min_uncertainty: float | None = None, passages: int = 3,
                 max_passage_chars: int = 600, use_gold: bool = True, answer_max_new_tokens: int = 512,
                 filter: EvolFilter | None = None, chunk_size: int = 64) -> None:
        if select_fraction is None and select_top_k is None and min_uncertainty is None:
            raise ConfigError("self_evolve: set select_fraction, select_top_k or min_uncertainty")
        if select_fraction is not None and not 0 < select_fraction <= 1:
            raise ConfigError(f"self_evolve.select_fraction={select_fraction}: expected a value in (0, 1]")
        self.scorer, self.generator, self.retriever = scorer, generator, retriever
        self.uncertainty = uncertainty
        self.rule = rule or KeepRule()
        self.out_dir = Path(out_dir)
        self.select_fraction, self.select_top_k, self.min_uncertainty = select_fraction, select_top_k, min_uncertainty
        self.n_passages = passages
        self.max_passage_chars = max_passage_chars
        self.use_gold = use_gold
        self.answer_max_new_tokens = answer_max_new_tokens
        self.filter = filter or EvolFilter()
        self.chunk_size = chunk_size
        self.scores_store = JsonlStore(self.out_dir / "scores.jsonl")
        self.runner = ResumableGenerator(generator, JsonlStore(self.out_dir / "cache.jsonl"), chunk_size)
        self.scored_now = 0

    # ----------------------------------------------------------------- steps
    def score(self, questions: Sequence[Question], contexts: Sequence[Sequence[Passage] | None],
              stage: str) -> list[Estimate]:
        """Estimates for ``questions`` (cached in ``scores.jsonl``: finished ones are not redone)."""
        scorer_id = getattr(self.scorer, "identity", type(self.scorer).__name__)
        keys = [request_key(f"{q.id}:{stage}", [{"q": q.display(), "ctx": [p.id for p in c or []]}],
                            scorer=scorer_id, est=repr(self.uncertainty)) for q, c in zip(questions, contexts)]
        todo = [i for i, k in enumerate(keys) if k not in self.scores_store]
        for start in range(0, len(todo), self.chunk_size):
            idx = todo[start: start + self.chunk_size]
            ests = self.uncertainty.estimate(self.scorer, [questions[i] for i in idx], [contexts[i] for i in idx])
            for i, e in zip(idx, ests):
                self.scores_store.add({"key": keys[i], "question": questions[i].id, "stage": stage, **asdict(e)})
                self.scored_now += 1
        return [Estimate(**{k: v for k, v in self.scores_store.get(k).items()
                            if k in ("prediction", "uncertainty", "label", "dist")}) for k in keys]

    def select(self, questions: Sequence[Question], est: Sequence[Estimate]) -> list[int]:
        chosen: list[int] = []
        for mcq in (True, False):
            idx = [i for i, q in enumerate(questions) if q.is_mcq == mcq]
            if self.min_uncertainty is not None:
                idx = [i for i in idx if est[i].uncertainty >= self.min_uncertainty]
            idx.sort(key=lambda i: (-est[i].uncertainty, i))
            n = len(idx)
            if self.select_fraction is not None:
                n = min(n, max(1, round(self.select_fraction * len([q for q in questions if q.is_mcq == mcq]))))
            if self.select_top_k is not None:
                n = min(n, self.select_top_k)
            chosen += idx[:n]
        return sorted(chosen)

    def retrieve(self, q: Question) -> list[Passage]:
        out = []
        for p in self.retriever.search(q.query(), self.n_passages):
            text = p.text if len(p.text) <= self.max_passage_chars else p.text[: self.max_passage_chars] + "……"
            out.append(Passage(p.id, text, p.title, p.source, p.score, p.meta))
        return out

    # ------------------------------------------------------------------- run
    def run(self, questions: Sequence[Question]) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        counts: dict[str, Any] = {"questions": len(questions),
                                  "multiple_choice": sum(q.is_mcq for q in questions)}
        before = self.score(questions, [None] * len(questions), "base")
        counts["scored"] = len(before)
        picked = self.select(questions, before)
        counts["selected_uncertain"] = len(picked)
        retrieved = {i: self.retrieve(questions[i]) for i in picked}
        with_ctx = [i for i in picked if retrieved[i]]
        counts["with_passages"] = len(with_ctx)
        after_list = self.score([questions[i] for i in with_ctx], [retrieved[i] for i in with_ctx], "rag")
        after = dict(zip(with_ctx, after_list))
        counts["rescored"] = len(after)

        cases, kept = [], []
        decisions: Counter = Counter()
        for i in picked:
            q, b = questions[i], before[i]
            case = {"id": q.id, "question": q.display(), "gold": q.answer if q.is_mcq else None,
                    "u_before": b.uncertainty, "pred_before": b.prediction,
                    "passages": [p.id for p in retrieved[i]]}
            if i not in after:
                case.update(kept=False, reason="no passages")
            else:
                a = after[i]
                ok, why = self.rule.decide(b, a, q.answer if q.is_mcq else None)
                case.update(u_after=a.uncertainty, pred_after=a.prediction, kept=ok, reason=why)
                if ok:
                    kept.append(i)
            decisions[case["reason"]] += 1
            cases.append(case)
        counts["kept_by_rule"] = len(kept)
        counts["decisions"] = dict(decisions.most_common())

        # knowledge-grounded answers for the kept cases
        requests, letters = [], {}
        for i in kept:
            q = questions[i]
            letter = (q.answer if self.use_gold and q.answer else after[i].label) if q.is_mcq else None
            letters[i] = letter
            msgs = grounded_messages(q, retrieved[i], letter)
            requests.append((request_key(f"{q.id}:answer", msgs, generator=getattr(self.generator, "identity",
                                         self.generator.name), max_new_tokens=self.answer_max_new_tokens), msgs))
        answers = self.runner.run(requests, self.answer_max_new_tokens)
        instructions, eliminated = [], Counter()
        case_of = {c["id"]: c for c in cases}
        for i, (key, _) in zip(kept, requests):
            q, text = questions[i], normalize_text(answers[key])
            why = self.filter.check_answer(text)
            if why is None and any(w.lower() in text.lower() for w in REFERENCE_WORDS):
                why = "mentions the references"
            if why is None and q.is_mcq and letters[i] and not re.search(rf"答案[：:]\s*{letters[i]}\s*$", text):
                text = f"{text}\n答案：{letters[i]}"
            case_of[q.id]["answer_check"] = why or "ok"
            if why:
                eliminated[why] += 1
                continue
            instructions.append({
                "id": f"self_evolve:{q.id}",
                "messages": [{"role": "user", "content": q.display()}, {"role": "assistant", "content": text}],
                "self_evolve": {"question": q.id, "u_before": before[i].uncertainty, "u_after": after[i].uncertainty,
                                "pred_before": before[i].prediction, "pred_after": after[i].prediction,
                                "gold": q.answer if q.is_mcq else None, "passages": [p.id for p in retrieved[i]]},
            })
        counts["answers_generated"] = len(requests)
        counts["answers_eliminated"] = dict(eliminated)
        counts["instruction_rows"] = len(instructions)

        knowledge: dict[str, dict] = {}
        seen_text: set[str] = set()
        for i in kept:
            for p in retrieved[i]:
                if p.id in knowledge:
                    knowledge[p.id]["questions"].append(questions[i].id)
                    continue
                text = clean_passage(self._full_passage(p))
                key = canonical(text)
                if not key or key in seen_text:
                    continue
                seen_text.add(key)
                knowledge[p.id] = {"text": text, "source": p.source, "id": p.id, "questions": [questions[i].id]}
        counts["knowledge_passages"] = len(knowledge)
        counts["scored_now"] = self.scored_now
        counts["answers_generated_now"] = self.runner.generated

        self._write("cases.jsonl", cases)
        self._write("instructions.jsonl", instructions)
        self._write("knowledge.jsonl", list(knowledge.values()))
        mean = (lambda xs: sum(xs) / len(xs) if xs else None)
        counts["mean_uncertainty"] = {
            "all_before": mean([e.uncertainty for e in before]),
            "selected_before": mean([before[i].uncertainty for i in picked]),
            "rescored_after": mean([after[i].uncertainty for i in with_ctx]),
            "kept_before": mean([before[i].uncertainty for i in kept]),
            "kept_after": mean([after[i].uncertainty for i in kept]),
        }
        counts["outputs"] = {n: str(self.out_dir / n) for n in ("knowledge.jsonl", "instructions.jsonl", "cases.jsonl")}
        from zhilu.utils.io import write_json_atomic

        write_json_atomic(self.out_dir / "report.json", counts)
        return counts

    def _full_passage(self, p: Passage) -> Passage:
        """The passage as indexed (untruncated) when the retriever has it."""
        for q in getattr(self.retriever, "passages", ()):
            if q.id == p.id:
                return q
        return p

    def _write(self, name: str, rows: list[dict]) -> None:
        path = self.out_dir / name
        tmp = path.with_name(name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)


STEPS = ("questions", "scored", "selected_uncertain", "with_passages", "rescored", "kept_by_rule",
         "answers_generated", "instruction_rows", "knowledge_passages")


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{'step':<22}{'count':>7}", "-" * 29]
    lines += [f"{k:<22}{r[k]:>7}" for k in STEPS]
    lines.append("decisions: " + "; ".join(f"{k}: {v}" for k, v in r["decisions"].items()))
    if r["answers_eliminated"]:
        lines.append("answers eliminated: " + "; ".join(f"{k}: {v}" for k, v in r["answers_eliminated"].items()))
    mu = {k: (f"{v:.3f}" if v is not None else "-") for k, v in r["mean_uncertainty"].items()}
    lines.append("mean uncertainty: " + ", ".join(f"{k} {v}" for k, v in mu.items()))
    return "\n".join(lines)
