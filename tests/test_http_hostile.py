"""The HTTP client against hostile servers on 127.0.0.1, each case bounded by its configured deadline:
redirects to another port or host name, a slow drip, an oversize reply, a server that never answers,
non-UTF-8 and non-JSON bodies, a fatal 400 among requests in flight; and no secret in a saved config."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from omegaconf import OmegaConf

from zhilu.synth.generators import OpenAIChatGenerator
from zhilu.synth.http import RemoteError, request_json
from zhilu.synth.retrieval import HTTPRetriever
from zhilu.utils.saved_config import config_for_saving

SLACK_S = 3.0  # thread start-up and polling on a loaded machine; the deadlines below are 1-2 s


def answer(content="好"):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


class Server:
    """A stub server whose every path is a behaviour (``/ok``, ``/drip``, ...); it logs what it saw."""

    def __init__(self, host="127.0.0.1"):
        self.seen = []
        self.stop = threading.Event()
        self.redirect_to = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, code, body: bytes, headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                if not any(k == "Content-Length" for k, _ in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_any(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                outer.seen.append({"method": method, "path": self.path, "auth": self.headers.get("Authorization"),
                                   "body": body})
                path = self.path.split("?")[0]
                content = json.loads(body)["messages"][-1]["content"] if body else ""
                if path.startswith("/redirect/"):  # /redirect/<code>: to redirect_to
                    return self.send(int(path.split("/")[2]), b"", [("Location", outer.redirect_to)])
                if path == "/drip":  # headers, then one byte every 0.2 s, forever
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    while not outer.stop.wait(0.2):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    return
                if path == "/silent" or "hang" in content:  # never answers
                    outer.stop.wait(60)
                    return
                if path == "/huge":
                    return self.send(200, b"", [("Content-Length", str(10 ** 12))])
                if path == "/stream":  # no Content-Length, more than the limit
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for _ in range(64):
                        self.wfile.write(b"x" * 1024)
                    return
                if path == "/gbk":
                    return self.send(200, '{"text": "征信"}'.encode("gbk"))
                if path == "/html":
                    return self.send(502 if "502" in self.path else 200, b"<html>\n<body>oops</body>\n</html>")
                if "bad" in content:
                    return self.send(400, b'{"error": {"message": "bad request\\nsecond line"}}')
                self.send(200, json.dumps(answer(f"{method} {path}")).encode())

            def do_GET(self):
                self.handle_any("GET")

            def do_POST(self):
                self.handle_any("POST")

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    a, b = Server(), Server()
    yield a, b
    a.close()
    b.close()


def post(url, **kw):
    kw = {"timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.02, "what": "chat completion",
          "headers": {"Authorization": "Bearer sk-secret"}, **kw}
    return request_json(url, {"messages": [{"role": "user", "content": "hi"}]}, **kw)


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_no_redirect_to_another_port_or_host_name(servers, code):
    a, b = servers
    a.redirect_to = f"{b.url}/v1/chat/completions"  # another port
    with pytest.raises(RemoteError, match=rf"^chat completion {a.url}/redirect/{code}: HTTP {code} redirect to "
                                          rf"{b.url}/v1/chat/completions refused \(another host or port"):
        post(f"{a.url}/redirect/{code}")
    a.redirect_to = f"http://localhost:{a.port}/v1/chat/completions"  # the same server under another name
    with pytest.raises(RemoteError, match="refused"):
        post(f"{a.url}/redirect/{code}")
    assert b.seen == [] and [s["path"] for s in a.seen] == [f"/redirect/{code}"] * 2  # no retry, nothing followed


def test_same_origin_redirects_keep_the_post_or_are_refused(servers):
    a, _ = servers
    a.redirect_to = "/v1/moved"
    assert post(f"{a.url}/redirect/307") == answer("POST /v1/moved")  # 307 keeps method, body and credentials
    assert a.seen[-1]["auth"] == "Bearer sk-secret" and json.loads(a.seen[-1]["body"])["messages"]
    with pytest.raises(RemoteError, match=r"HTTP 302 redirect to .*/v1/moved refused \(it would turn the POST"):
        post(f"{a.url}/redirect/302")
    assert [s["method"] for s in a.seen] == ["POST", "POST", "POST"]  # never a GET
    assert request_json(f"{a.url}/redirect/302", None, timeout_s=2) == answer("GET /v1/moved")  # GET may follow


@pytest.mark.parametrize("path, message", [
    ("/drip", r"no complete reply within the deadline \(timeout_s=1\.5, for the whole request\)"),
    ("/silent", r"no complete reply within the deadline \(timeout_s=1\.5"),
])
def test_slow_drip_and_silence_end_at_the_deadline(servers, path, message):
    a, _ = servers
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match=rf"^chat completion {a.url}{path}: failed after 1 attempts \({message}"):
        post(a.url + path, timeout_s=1.5, max_retries=5)
    assert time.monotonic() - t0 < 1.5 + SLACK_S


def test_replies_over_the_size_limit_are_refused(servers):
    a, _ = servers
    with pytest.raises(RemoteError, match=r"/huge: HTTP 200: the reply is 1,000,000,000,000 bytes, over the limit of "
                                          r"1,000 \(max_response_bytes\)$"):
        post(a.url + "/huge", max_bytes=1000)
    with pytest.raises(RemoteError, match=r"/stream: HTTP 200: the reply exceeds the limit of 8,192 bytes"):
        post(a.url + "/stream", max_bytes=8192)


def test_bodies_that_are_not_utf8_or_json_are_one_line_with_url_and_status(servers):
    a, _ = servers
    with pytest.raises(RemoteError) as info:
        post(a.url + "/gbk")
    msg = str(info.value)
    assert msg.startswith(f"chat completion {a.url}/gbk: HTTP 200: the reply is not UTF-8 (byte 10: ") and "\n" not in msg
    with pytest.raises(RemoteError, match=rf"^chat completion {a.url}/html: HTTP 200: the reply is not JSON: "
                                          r"'<html>\\n<body>oops</body>\\n</html>'$"):
        post(a.url + "/html")
    with pytest.raises(RemoteError) as info:  # a retried status that never recovers: the last reply, one line
        post(a.url + "/html?502", max_retries=1)
    assert "failed after 2 attempts (HTTP 502 '<html>\\n" in str(info.value) and "\n" not in str(info.value)


def test_a_fatal_400_cancels_the_requests_in_flight(servers):
    a, _ = servers
    g = OpenAIChatGenerator(a.url + "/v1", model="m", concurrency=4, timeout_s=30, max_retries=3, backoff_s=0.01)
    prompts = [[{"role": "user", "content": c}] for c in ("hang 1", "hang 2", "bad", "hang 3", "never sent")]
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match=r"HTTP 400 '\{\"error\": \{\"message\": \"bad request\\\\nsecond line"):
        list(g.generate(prompts))
    assert time.monotonic() - t0 < SLACK_S  # not after the hanging requests' 30 s deadline
    assert sorted(json.loads(s["body"])["messages"][0]["content"] for s in a.seen) == ["bad", "hang 1", "hang 2",
                                                                                         "hang 3"]


def test_retriever_credentials_come_from_the_environment_at_call_time(servers, monkeypatch):
    a, _ = servers
    r = HTTPRetriever(a.url + "/search", headers_from_env={"Authorization": "Bearer $SEARCH_KEY"}, timeout_s=2)
    monkeypatch.setenv("SEARCH_KEY", "first")
    with pytest.raises(RemoteError):  # the stub's reply has no 'results' list
        r.search("q")
    monkeypatch.setenv("SEARCH_KEY", "rotated")
    with pytest.raises(RemoteError):
        r.search("q")
    assert [s["auth"] for s in a.seen] == ["Bearer first", "Bearer rotated"]


def test_secrets_never_reach_a_saved_config(monkeypatch, tmp_path):
    monkeypatch.setenv("SEARCH_KEY", "sk-live-123456")
    cfg = OmegaConf.create({
        "retriever": {"headers": {"Authorization": "Bearer ${oc.env:SEARCH_KEY}", "X-Trace": "on"},
                      "api_key": "literal-key", "api_key_env": "OPENAI_API_KEY"},
        "copy": "${retriever.headers.Authorization}",  # an interpolation of the secret elsewhere
        "n": 3,
    })
    saved = config_for_saving(cfg)
    assert saved == {"retriever": {"headers": {"Authorization": "Bearer ${oc.env:SEARCH_KEY}", "X-Trace": "on"},
                                   "api_key": "***", "api_key_env": "OPENAI_API_KEY"},
                     "copy": "Bearer ${oc.env:SEARCH_KEY}", "n": 3}
    assert "sk-live" not in yaml.safe_dump(saved)


def test_the_synth_app_saves_its_config_without_the_key(monkeypatch, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tests.conftest import ROOT
    from zhilu.synth.app import _save_config

    monkeypatch.setenv("SEARCH_KEY", "sk-live-123456")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("synth/self_evolve", overrides=[f"out_dir={tmp_path}", "retriever=http",
                                                      "+retriever.headers.Authorization=Bearer ${oc.env:SEARCH_KEY}"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    _save_config(cfg, tmp_path, "self_evolve_config.yaml")
    text = (tmp_path / "self_evolve_config.yaml").read_text(encoding="utf-8")
    assert "sk-live" not in text and "Bearer ${oc.env:SEARCH_KEY}" in text
