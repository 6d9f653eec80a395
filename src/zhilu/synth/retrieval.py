"""Retrievers for self-evolution: a local BM25 index over a document folder (the embedded
default), or an HTTP search service.

BM25: Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and Beyond",
https://doi.org/10.1561/1500000019. Score of document d for query q:
``sum_{t in q} idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))`` with
Lucene's always-positive ``idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))`` (on a small
folder, the classic idf turns negative for terms in most documents). Chinese is segmented with
``jieba`` (search mode, which also emits the shorter words inside long ones).
"""

from __future__ import annotations

import logging
import math
import re
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from zhilu.data.clean import normalize_text
from zhilu.errors import ConfigError, DataError
from zhilu.synth.http import RateLimiter, RemoteError, request_json
from zhilu.utils.jsonl import read_text

log = logging.getLogger(__name__)

STOPWORDS = frozenset(
    "的 了 是 在 和 与 及 或 吗 呢 啊 吧 呀 之 其 而 被 把 对 从 向 为 以 于 也 就 都 又 还 很 更 最 这 那 哪 些 个 有 没 "
    "我 你 他 她 它 们 我们 你们 他们 什么 怎么 如何 为什么 是否 可以 能 会 要 请 下列 以下 哪个 哪些 一个 "
    "a an the of to in on at for and or is are was were be been by with as it this that what which how why "
    "do does did can could should would".split())
_WORDLIKE = re.compile(r"\w", re.UNICODE)


@dataclass
class Passage:
    id: str
    text: str
    title: str = ""
    source: str = ""
    score: float = 0.0
    meta: dict = field(default_factory=dict)

    def as_context(self) -> str:
        return f"{self.title}：{self.text}" if self.title else self.text


class Retriever(Protocol):
    def search(self, query: str, top_k: int | None = None) -> list[Passage]: ...


def tokenize_zh(text: str) -> list[str]:
    """Lower-cased jieba search-mode words without punctuation and stop words."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    words = jieba.lcut_for_search(normalize_text(text).lower())
    return [w for w in (w.strip() for w in words) if w and _WORDLIKE.search(w) and w not in STOPWORDS]


class BM25Index:
    """An inverted index with BM25 scores (sparse: only documents sharing a term are scored)."""

    def __init__(self, docs: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75) -> None:
        if not docs:
            raise DataError("BM25: no documents to index")
        self.k1, self.b = k1, b
        self.n = len(docs)
        self.lengths = [len(d) for d in docs]
        self.avgdl = sum(self.lengths) / self.n or 1.0
        self.postings: dict[str, list[tuple[int, int]]] = {}
        for i, doc in enumerate(docs):
            for term, tf in Counter(doc).items():
                self.postings.setdefault(term, []).append((i, tf))
        self.idf = {t: math.log(1 + (self.n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()}

    def scores(self, query: Sequence[str]) -> dict[int, float]:
        out: dict[int, float] = {}
        for term in query:  # a repeated query term counts again, as in rank_bm25 and Lucene
            idf = self.idf.get(term)
            if idf is None:
                continue
            for doc, tf in self.postings[term]:
                norm = self.k1 * (1 - self.b + self.b * self.lengths[doc] / self.avgdl)
                out[doc] = out.get(doc, 0.0) + idf * tf * (self.k1 + 1) / (tf + norm)
        return out

    def top(self, query: Sequence[str], k: int) -> list[tuple[int, float]]:
        return sorted(self.scores(query).items(), key=lambda x: (-x[1], x[0]))[:k]


_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def split_markdown(text: str, source: str, max_chars: int = 400) -> list[Passage]:
    """Passages of a Markdown file: one per section (its heading path is the title), long sections
    cut at paragraph boundaries into pieces of at most about ``max_chars`` characters."""
    passages: list[Passage] = []
    heads: list[str] = []
    body: list[str] = []

    def flush() -> None:
        paras = [p.strip() for p in "\n".join(body).split("\n\n") if p.strip()]
        chunk = ""
        for para in paras:
            if chunk and len(chunk) + len(para) > max_chars:
                passages.append(Passage(f"{source}#{len(passages)}", chunk, " / ".join(heads), source))
                chunk = ""
            chunk = f"{chunk}\n{para}" if chunk else para
        if chunk:
            passages.append(Passage(f"{source}#{len(passages)}", chunk, " / ".join(heads), source))
        body.clear()

    for line in text.replace("\r\n", "\n").split("\n"):  # not splitlines(): U+2028 etc. stay in their line
        m = _HEADING.match(line)
        if m:
            flush()
            level = len(m.group(1))
            heads[:] = heads[: level - 1] + [m.group(2).strip()]
        else:
            body.append(line)
    flush()
    return passages


def load_folder(folder: str | Path, max_chars: int = 400, pattern: str = "*.md") -> list[Passage]:
    """Passages of every ``pattern`` file under ``folder`` (``.md`` split by sections; other text
    files by blank lines)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"retriever.folder={folder}: not a directory")
    passages: list[Passage] = []
    for f in sorted(root.rglob(pattern)):
        text = read_text(f)
        passages += split_markdown(text, str(f.relative_to(root)), max_chars)
    if not passages:
        raise DataError(f"retriever.folder={folder}: no {pattern} documents with text")
    return passages


class BM25Retriever:
    """BM25 over a folder of documents (``data/knowledge`` by default) or given passages.

    Args:
        folder: documents to index (Markdown split into sections of about ``max_chars``).
        top_k: passages per query; min_score: drop passages scoring below this.
        k1, b: BM25 parameters.
    """

    def __init__(self, folder: str | Path | None = None, passages: Sequence[Passage] | None = None,
                 top_k: int = 3, min_score: float = 0.0, max_chars: int = 400, pattern: str = "*.md",
                 k1: float = 1.5, b: float = 0.75, tokenizer: Callable[[str], list[str]] = tokenize_zh) -> None:
        if passages is None:
            if folder is None:
                raise ConfigError("retriever: give a folder of documents (retriever.folder=...)")
            passages = load_folder(folder, max_chars, pattern)
        self.passages = list(passages)
        self.top_k = top_k
        self.min_score = min_score
        self.tokenizer = tokenizer
        self.index = BM25Index([tokenizer(f"{p.title}\n{p.text}") for p in self.passages], k1, b)
        log.info("BM25 index: %d passages, %d terms", len(self.passages), len(self.index.postings))

    def search(self, query: str, top_k: int | None = None) -> list[Passage]:
        hits = self.index.top(self.tokenizer(query), top_k or self.top_k)
        out = []
        for i, score in hits:
            if score > self.min_score:
                p = self.passages[i]
                out.append(Passage(p.id, p.text, p.title, p.source, score, dict(p.meta)))
        return out


def _dig(obj: Any, path: str) -> Any:
    for part in filter(None, path.split(".")):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


class HTTPRetriever:
    """A search service that answers JSON: ``GET {url}?{query_param}=...&{top_k_param}=k`` (or a
    ``POST`` of ``{query_param: ..., top_k_param: k}``); the hits are the list at
    ``results_path`` (dots for nesting), each with ``text_field`` (and optional title/id fields).
    """

    def __init__(self, url: str, method: str = "GET", query_param: str = "q", top_k_param: str | None = "k",
                 top_k: int = 3, results_path: str = "results", text_field: str = "text", title_field: str = "title",
                 id_field: str = "id", score_field: str = "score", headers: Mapping[str, str] | None = None,
                 requests_per_minute: float | None = None, timeout_s: float = 30.0, max_retries: int = 3,
                 backoff_s: float = 1.0, headers_from_env: Mapping[str, str] | None = None,
                 max_response_bytes: int = 16 << 20) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"retriever.url={url!r}: expected an http(s):// URL")
        if method not in ("GET", "POST"):
            raise ConfigError(f"retriever.method={method!r}: expected GET or POST")
        self.url, self.method = url, method
        self.query_param, self.top_k_param, self.top_k = query_param, top_k_param, top_k
        self.results_path = results_path
        self.fields = {"text": text_field, "title": title_field, "id": id_field, "score": score_field}
        self.headers = dict(headers or {})
        # e.g. {Authorization: "Bearer $SEARCH_API_KEY"}: $NAME is read from the environment at each call,
        # so the key is never part of the config (nor of the saved copy of it)
        self.headers_from_env = {str(k): str(v) for k, v in (headers_from_env or {}).items()}
        self.limiter = RateLimiter(requests_per_minute)
        self.retry = {"timeout_s": timeout_s, "max_retries": max_retries, "backoff_s": backoff_s,
                      "max_bytes": max_response_bytes}

    def _headers(self) -> dict[str, str]:
        import os
        import string

        out = dict(self.headers)
        for name, template in self.headers_from_env.items():
            try:
                out[name] = string.Template(template).substitute(os.environ)
            except KeyError as exc:
                raise ConfigError(f"retriever.headers_from_env.{name}: environment variable {exc.args[0]} is not set"
                                  ) from None
        return out

    def search(self, query: str, top_k: int | None = None) -> list[Passage]:
        k = top_k or self.top_k
        params = {self.query_param: query, **({self.top_k_param: k} if self.top_k_param else {})}
        if self.method == "GET":
            sep = "&" if "?" in self.url else "?"
            reply = request_json(self.url + sep + urllib.parse.urlencode(params), None, self._headers(),
                                 limiter=self.limiter, what="search", **self.retry)
        else:
            reply = request_json(self.url, params, self._headers(), limiter=self.limiter, what="search", **self.retry)
        try:
            hits = _dig(reply, self.results_path)
        except (KeyError, IndexError, TypeError, ValueError):
            raise RemoteError(f"search {self.url}: no list at {self.results_path!r} in the reply") from None
        out = []
        for n, h in enumerate(hits[:k] if isinstance(hits, list) else []):
            text = h.get(self.fields["text"]) if isinstance(h, dict) else None
            if not isinstance(text, str) or not text.strip():
                continue
            out.append(Passage(str(h.get(self.fields["id"], f"{self.url}#{n}")), text.strip(),
                               str(h.get(self.fields["title"], "") or ""), self.url,
                               float(h.get(self.fields["score"], 0.0) or 0.0)))
        return out
