"""The HTTP generator and retriever against a stub OpenAI-compatible server on 127.0.0.1."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from tests.conftest import ROOT, write_jsonl
from tests.test_synth_self_evolve import KNOWLEDGE
from zhilu.data.formats import iter_rows
from zhilu.data.mixture import read_text_rows
from zhilu.synth.evol import Evolver, Instruction
from zhilu.synth.generators import OpenAIChatGenerator, entropy_from_logprobs
from zhilu.synth.http import RateLimiter, RemoteError
from zhilu.synth.retrieval import HTTPRetriever
from zhilu.synth.store import JsonlStore
from zhilu.synth.uncertainty import LetterEntropy
from zhilu.synth.questions import Question

TOP = [{"token": "B", "logprob": math.log(0.6)}, {"token": " A", "logprob": math.log(0.3)},
       {"token": "C", "logprob": math.log(0.05)}, {"token": "好", "logprob": math.log(0.01)}]


CLAUSES = ("请给出计算步骤和一个例子。", "再比较两家银行的规定有何不同。", "最后说明逾期的后果。", "并总结。")
SURE = [{"token": "B", "logprob": math.log(0.97)}, {"token": "A", "logprob": math.log(0.01)},
        {"token": "C", "logprob": math.log(0.01)}, {"token": "D", "logprob": math.log(0.01)}]


class Stub:
    """Shared state of the stub server: scripted failures and a log of the requests it saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.fail_next = []  # status codes to answer with, one per request, before answering normally
        self.fail_from = None  # answer 500 to every chat request once this many have succeeded
        self.ok = 0

    def next_failure(self):
        with self.lock:
            if self.fail_next:
                return self.fail_next.pop(0)
            if self.fail_from is not None and self.ok >= self.fail_from:
                return 500
            self.ok += 1
            return None


def make_handler(stub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, obj, headers=()):
            body = json.dumps(obj, ensure_ascii=False).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlparse(self.path)
            q = parse_qs(url.query)
            with stub.lock:
                stub.requests.append({"path": url.path, "query": q, "t": time.monotonic()})
            hits = [{"id": "doc1", "title": "征信", "text": f"关于{q['q'][0]}的资料", "score": 3.5},
                    {"id": "doc2", "text": "  "}, {"id": "doc3", "text": "第二条资料"}]
            self.reply(200, {"data": {"hits": hits[: int(q["k"][0])]}})

        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with stub.lock:
                stub.requests.append({"path": self.path, "payload": payload, "t": time.monotonic(),
                                      "auth": self.headers.get("Authorization")})
            code = stub.next_failure()
            if code == 429:
                return self.reply(429, {"error": "slow down"}, [("Retry-After", "0")])
            if code is not None:
                return self.reply(code, {"error": {"message": f"scripted {code}"}})
            user = payload["messages"][-1]["content"]
            if "#给定指令#：" in user:  # an evolution prompt: return the instruction with one more request
                given = user.split("#给定指令#：\n", 1)[1].rsplit("\n\n#", 1)[0]
                user = given + next(c for c in CLAUSES if c not in given)
            choice = {"index": 0, "message": {"role": "assistant", "content": f"答：{user}"}, "finish_reason": "stop"}
            if "参考资料" in user and not payload.get("logprobs"):  # a knowledge-grounded answer
                choice["message"]["content"] = "依据相关规定，个人不良信息保存期限为5年。"
            if payload.get("logprobs"):
                top = SURE if "参考资料" in user and "题目" in user else TOP  # knowledge makes it sure of B
                choice["logprobs"] = {"content": [{"token": "B", "logprob": top[0]["logprob"], "top_logprobs": top}]}
            self.reply(200, {"id": "x", "object": "chat.completion", "choices": [choice]})

    return Handler


@pytest.fixture
def server():
    stub = Stub()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(stub))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield stub
    httpd.shutdown()
    httpd.server_close()


def gen(stub, **kw):
    kw = {"concurrency": 4, "max_retries": 3, "backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 10, **kw}
    return OpenAIChatGenerator(stub.url + "/v1", model="stub-model", **kw)


def msgs(text):
    return [{"role": "user", "content": text}]


def test_generate_returns_every_completion_by_index(server, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-test")
    g = gen(server, api_key_env="STUB_KEY")
    out = dict(g.generate([msgs(f"问题{i}") for i in range(10)], max_new_tokens=7))
    assert out == {i: f"答：问题{i}" for i in range(10)}
    posts = [r for r in server.requests if r["path"] == "/v1/chat/completions"]
    assert len(posts) == 10 and all(r["auth"] == "Bearer sk-test" for r in posts)
    assert all(r["payload"]["model"] == "stub-model" and r["payload"]["max_tokens"] == 7 for r in posts)


def test_transient_errors_are_retried_and_client_errors_are_not(server):
    server.fail_next = [503, 429, 502]
    assert dict(gen(server).generate([msgs("再试")])) == {0: "答：再试"}
    assert len(server.requests) == 4  # three failures, then the answer
    server.requests.clear()
    server.fail_next = [401]
    with pytest.raises(RemoteError, match=r"HTTP 401 .*scripted 401"):
        list(gen(server).generate([msgs("无权限")]))
    assert len(server.requests) == 1
    server.fail_next = [500] * 10
    with pytest.raises(RemoteError, match="failed after 3 attempts"):
        list(gen(server, max_retries=2).generate([msgs("一直失败")]))


def test_rate_limiter_spaces_calls():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(round(s, 6))
        now[0] += s

    lim = RateLimiter(per_minute=120, clock=lambda: now[0], sleep=sleep)  # one call per 0.5 s
    for _ in range(4):
        lim.acquire()
    assert slept == [0.5, 0.5, 0.5] and now[0] == pytest.approx(1.5)


def test_rate_limit_holds_against_the_server(server):
    g = gen(server, requests_per_minute=1200, concurrency=4)  # at most one request per 50 ms
    t0 = time.monotonic()
    assert len(dict(g.generate([msgs(str(i)) for i in range(6)]))) == 6
    times = sorted(r["t"] for r in server.requests)
    assert time.monotonic() - t0 >= 0.25
    assert times[-1] - times[0] >= 0.2  # 6 starts spaced 50 ms apart (arrivals jitter a little)


def test_logprob_scoring_through_the_server(server):
    g = gen(server)
    lps = g.choice_logprobs([msgs("题目")], ["A", "B", "C", "D"])[0]
    assert lps[:3] == pytest.approx([math.log(0.3), math.log(0.6), math.log(0.05)]) and lps[3] == -math.inf
    assert server.requests[-1]["payload"]["max_tokens"] == 1 and server.requests[-1]["payload"]["top_logprobs"] == 20
    # letter entropy: renormalised over A-D = (0.3, 0.6, 0.05, 0) / 0.95, divided by ln 4
    est = LetterEntropy().estimate(g, [Question("q", "题目", {"A": "a", "B": "b", "C": "c", "D": "d"})], [None])[0]
    p = [0.3 / 0.95, 0.6 / 0.95, 0.05 / 0.95]
    assert est.label == "B" and est.uncertainty == pytest.approx(-sum(x * math.log(x) for x in p) / math.log(4))
    text, h = g.generate_with_entropy([msgs("开放题")], max_new_tokens=5)[0]
    # top-4 masses 0.6, 0.3, 0.05, 0.01 and the missing 0.04 as one more outcome
    assert text == "答：开放题" and h == pytest.approx(entropy_from_logprobs([t["logprob"] for t in TOP]))
    assert h == pytest.approx(-sum(x * math.log(x) for x in (0.6, 0.3, 0.05, 0.01, 0.04)))


def test_http_retriever_reads_nested_results(server):
    r = HTTPRetriever(server.url + "/search", results_path="data.hits", top_k=3)
    hits = r.search("征信 异议")
    assert [(h.id, h.title, h.text, h.score) for h in hits] == [
        ("doc1", "征信", "关于征信 异议的资料", 3.5), ("doc3", "", "第二条资料", 0.0)]  # the blank hit is skipped
    assert server.requests[-1]["query"] == {"q": ["征信 异议"], "k": ["3"]}
    with pytest.raises(RemoteError, match="no list at 'results'"):
        HTTPRetriever(server.url + "/search").search("x")


def test_interrupted_http_synthesis_resumes_without_duplicates(server, tmp_path):
    seeds = [Instruction(f"s{i}", f"第{i}个问题：信用卡分期的手续费怎么算？", "finance", f"s{i}") for i in range(6)]
    server.fail_from = 5  # the server breaks down after five completions
    with pytest.raises(RemoteError):
        Evolver(gen(server, max_retries=0, concurrency=2), tmp_path, rounds=1, chunk_size=4).run(seeds)
    assert len(JsonlStore(tmp_path / "cache.jsonl")) == 5
    server.fail_from, server.ok = None, 0
    report = Evolver(gen(server, concurrency=2), tmp_path, rounds=1, chunk_size=4).run(seeds)
    assert report["reused_from_cache"] == 5 and report["generated"] == 12 - 5 and server.ok == 7
    keys = [json.loads(line)["key"] for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 12
    rows = [json.loads(line) for line in (tmp_path / "evol.jsonl").read_text().splitlines()]
    assert sorted(r["evol"]["root"] for r in rows) == [f"s{i}" for i in range(6)]


def compose_synth(name, out_dir, overrides):
    """``conf/synth/<name>.yaml`` as ``python -m zhilu.synth <name>`` would compose it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(f"synth/{name}", overrides=[f"out_dir={out_dir}", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def test_evol_app_from_its_config_with_the_http_generator(server, tmp_path, capsys):
    from zhilu.synth.app import run_evol

    seeds = write_jsonl(tmp_path / "seeds.jsonl", [
        {"messages": [{"role": "user", "content": f"第{i}题：信用卡账单日和还款日有什么区别？"},
                      {"role": "assistant", "content": "答"}]} for i in range(3)])
    cfg = compose_synth("evol", tmp_path / "out", ["generator=http", f"generator.base_url={server.url}/v1",
                                                   f"seeds.path={seeds}", "evol.rounds=2", "generator.concurrency=2"])
    report = run_evol(cfg)
    assert report["kept"] == 6 and report["generated"] == 12  # 3 seeds x 2 rounds x (evolve + answer)
    rows = list(iter_rows(tmp_path / "out" / "evol.jsonl", "chat"))  # chat rows, ready for a mixture
    assert len(rows) == 6 and rows[-1][0]["content"].endswith("请给出计算步骤和一个例子。再比较两家银行的规定有何不同。")
    assert "kept 6 rows from 3 seeds" in capsys.readouterr().out
    assert (tmp_path / "out" / "evol_config.yaml").is_file()


def test_self_evolve_app_from_its_config_with_http_and_bm25(server, tmp_path):
    from zhilu.synth.app import run_self_evolve

    folder = tmp_path / "knowledge"
    folder.mkdir()
    for name, text in KNOWLEDGE.items():
        (folder / name).write_text(text, encoding="utf-8")
    qs = write_jsonl(tmp_path / "q.jsonl", [
        {"id": "m1", "question": "个人征信不良信息保存几年？", "choices": ["3年", "5年", "7年", "10年"], "answer": "B"},
        {"id": "m2", "question": "信用卡免息期最长多少天？", "A": "30", "B": "56", "C": "60", "D": "90"},
        {"id": "o1", "question": "征信异议多久答复？"}])
    cfg = compose_synth("self_evolve", tmp_path / "out", [
        "generator=http", f"generator.base_url={server.url}/v1", f"retriever.folder={folder}",
        f"questions.path={qs}", "self_evolve.select_fraction=1.0"])
    report = run_self_evolve(cfg)
    assert (report["selected_uncertain"], report["with_passages"], report["kept_by_rule"],
            report["instruction_rows"]) == (3, 3, 2, 2)
    assert report["decisions"] == {"uncertainty fell": 2, "no drop, no flip": 1}
    out = tmp_path / "out"
    rows = list(iter_rows(out / "instructions.jsonl", "chat"))  # the mixture's readers take both outputs
    assert rows[0][1]["content"].endswith("答案：B")
    assert any("保存5年" in t for t in read_text_rows(out / "knowledge.jsonl"))
