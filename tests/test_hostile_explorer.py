"""The explorer's HTTP server against hostile or broken clients, on a real tiny model: raw
requests over sockets, every answer checked to be standard JSON with an "error" (or a result)."""

import json
import socket
import threading
import time

import pytest

from llmri.dictionaries import DictConfig, build
from llmri.features.serve import Explorer, ExplorerBusy, Loaded, make_server


def strict_json(body: bytes):
    """Parse as standard JSON: NaN / Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(body, parse_constant=refuse)


@pytest.fixture(scope="module")
def sae(tiny):
    model = tiny("llama")
    d = build(DictConfig(kind="sae", arch="topk", in_points=["resid_post.1"], d_in=64, n_latents=48, k=4,
                         model_name=model.name)).eval()
    return model, d


@pytest.fixture
def start(sae):
    """Factory: serve an Explorer (keyword arguments to Explorer, plus ``request_timeout``) on 127.0.0.1:0."""
    servers = []

    def run(request_timeout=30.0, **kw):
        model, d = sae
        ex = Explorer(model, [Loaded("sae", d, {}, None)], max_tokens=40, **kw)
        server = make_server(ex, port=0, request_timeout=request_timeout)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return ex, server.server_address[1]

    yield run
    for server in servers:
        server.shutdown()
        server.server_close()


def raw(port, head: str, body: bytes = b"", timeout=10.0, send_body=True):
    """Send ``head`` (request line and headers, CRLF added) and ``body``; read until the server closes.
    Returns (status, headers dict with lower-case names, body bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + (body if send_body else b""))
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:  # a refused request's unread bytes may make the close a reset
            assert data, "reset before any answer"
    top, _, content = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, content


def post(port, path, body, host=None, ctype="application/json", extra="", length=None, **kw):
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\nHost: {host or f'127.0.0.1:{port}'}\nContent-Type: {ctype}\n"
            f"Content-Length: {len(body) if length is None else length}" + extra)
    return raw(port, head, body, **kw)


def error_of(status, headers, body, code):
    assert status == code, (status, body)
    assert headers["content-type"] == "application/json"
    assert not any(k.startswith("access-control-") for k in headers)
    out = strict_json(body)
    assert set(out) == {"error"} and out["error"]
    return out["error"]


STEER = '{"prompt": "the war", "dictionary": 0, "feature": 3, "mode": "add", "max_new_tokens": 4, "coefficient": %s}'


@pytest.mark.parametrize("number, message", [
    ("NaN", "NaN is not a JSON number"), ("Infinity", "Infinity is not a JSON number"),
    ("-Infinity", "-Infinity is not a JSON number"), ("1e400", "1e400 is too large"),
    ('"nan"', "not a finite number"), ('"-inf"', "not a finite number"),
])
def test_non_finite_coefficients_are_refused_with_json_400(start, number, message):
    ex, port = start()
    assert message in error_of(*post(port, "/api/steer", (STEER % number).encode()), 400)


@pytest.mark.parametrize("length, code, message", [
    ("abc", 400, "not a byte count"), ("-5", 400, "not a byte count"), ("+5", 400, "not a byte count"),
    ("5\nContent-Length: 7", 400, "not a byte count"),
    (None, 411, "no Content-Length"), ("5\nTransfer-Encoding: chunked", 411, "no Content-Length"),
])
def test_bad_content_length_gets_a_prompt_json_answer(start, length, code, message):
    ex, port = start(request_timeout=20.0)
    head = f"POST /api/analyze HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: application/json"
    if length is not None:
        head += f"\nContent-Length: {length}"
    t = time.monotonic()
    answer = raw(port, head, b'{"prompt": "the war"}', timeout=5.0)
    assert message in error_of(*answer, code)
    assert time.monotonic() - t < 3


def test_oversized_body_is_refused_413_without_reading_it(start):
    ex, port = start(request_timeout=20.0)
    t = time.monotonic()
    answer = post(port, "/api/analyze", b"", length=10**9, timeout=5.0)
    assert "more than 1000000" in error_of(*answer, 413)
    assert time.monotonic() - t < 3


def test_a_body_shorter_than_announced_times_out_and_the_server_keeps_serving(start):
    ex, port = start(request_timeout=1.0)
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # keeps its end open: no EOF
        s.sendall(f"POST /api/analyze HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                  "Content-Length: 100\r\n\r\n{\"prompt\":".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert b" 408 " in data.split(b"\r\n")[0] and "within 1 s" in strict_json(data.partition(b"\r\n\r\n")[2])["error"]
    assert time.monotonic() - t < 5
    status, _, body = post(port, "/api/analyze", {"prompt": "the war"})
    assert status == 200 and len(strict_json(body)["tokens"]) == 3
    assert not ex.lock.locked()


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1:1", "127.0.0.1.evil.example:{port}"])
def test_a_foreign_host_is_refused_403(start, method, host):
    ex, port = start()
    host = host.format(port=port)
    if method == "GET":
        answer = raw(port, f"GET / HTTP/1.1\nHost: {host}")
    else:
        answer = post(port, "/api/analyze", {"prompt": "the war"}, host=host)
    assert "does not name this server" in error_of(*answer, 403)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LocalHost:{port}"])
def test_loopback_host_names_are_accepted(start, host):
    ex, port = start()
    status, headers, body = raw(port, f"GET / HTTP/1.1\nHost: {host.format(port=port)}")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'headers: {"Content-Type": "application/json"}' in body  # the page's own POSTs pass the 415 rule


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1:{port}"])
def test_a_foreign_origin_is_refused_403(start, origin):
    ex, port = start()
    extra = f"\nOrigin: {origin.format(port=port)}"
    assert "cross-origin" in error_of(*post(port, "/api/analyze", {"prompt": "the war"}, extra=extra), 403)
    assert "cross-origin" in error_of(*raw(port, f"GET / HTTP/1.1\nHost: 127.0.0.1:{port}{extra}"), 403)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_a_simple_request_post_is_refused_415(start, ctype):
    ex, port = start()
    answer = post(port, "/api/analyze", {"prompt": "the war"}, ctype=ctype)
    assert "send application/json" in error_of(*answer, 415)


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_a_same_origin_analysis_answers_200(start, name):
    ex, port = start()
    status, headers, body = post(port, "/api/analyze", {"prompt": "the war"}, host=f"{name}:{port}",
                                 ctype="application/json; charset=utf-8", extra=f"\nOrigin: http://{name}:{port}")
    assert status == 200 and headers["content-type"] == "application/json"
    assert len(strict_json(body)["tokens"]) == 3


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_get_405_json_and_no_cors(start, method):
    ex, port = start()
    answer = raw(port, f"{method} /api/analyze HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: http://127.0.0.1:{port}\n"
                       "Access-Control-Request-Method: POST\nContent-Length: 0")
    assert f"{method} is not allowed" in error_of(*answer, 405)
    assert "Unsupported method" in error_of(*raw(port, f"BREW / HTTP/1.1\nHost: 127.0.0.1:{port}"), 501)


def test_steering_under_a_tiny_time_limit_still_answers(start):
    ex, port = start(time_limit=1e-6)
    status, _, body = post(port, "/api/steer", (STEER % "2.0").replace('"max_new_tokens": 4', '"max_new_tokens": 20').encode())
    res = strict_json(body)
    assert status == 200 and res["truncated_by_time"] is True
    assert 0 < len(res["original"].split()) < 20 and res["coefficient"] == 2.0
    ex.time_limit = 60.0
    res = strict_json(post(port, "/api/steer", (STEER % "2.0").encode())[2])
    assert res["truncated_by_time"] is False and len(res["original"].split()) == 4


def test_a_busy_model_answers_503_within_the_lock_timeout(start):
    ex, port = start(lock_timeout=0.5)
    assert ex.lock.acquire(timeout=5)
    try:
        t = time.monotonic()
        assert "busy" in error_of(*post(port, "/api/analyze", {"prompt": "the war"}), 503)
        assert 0.4 < time.monotonic() - t < 3
        with pytest.raises(ExplorerBusy, match="busy"):
            ex.steer("the war", 0, 3, 1.0)
    finally:
        ex.lock.release()
    assert post(port, "/api/analyze", {"prompt": "the war"})[0] == 200


def test_unexpected_failures_and_non_finite_results_become_json_500(start, monkeypatch):
    ex, port = start()

    def boom(prompt):
        raise RuntimeError("boom")

    monkeypatch.setattr(ex, "analyze", boom)
    assert error_of(*post(port, "/api/analyze", {"prompt": "the war"}), 500) == "internal error: RuntimeError: boom"
    monkeypatch.setattr(ex, "analyze", lambda prompt: {"norms": [[float("inf")]]})
    assert "non-finite" in error_of(*post(port, "/api/analyze", {"prompt": "the war"}), 500)
