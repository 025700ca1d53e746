"""``llmri serve``: a local text explorer (standard-library HTTP server, 127.0.0.1 by default).

Type a prompt and see, per layer and token, the residual-stream norm, and per token the top active
features of each loaded dictionary (linked to their dashboards); steer generation by adding a feature's
decoder vector with a coefficient, or by clamping the feature's activation, and compare the original and
steered continuations. Every bad input becomes a JSON ``{"error": ...}`` with status 400 that the page
shows; the model is used by one request at a time.

Security rules (any web page the user visits can send requests to a local server, so each one is checked):

- **Host**: every request's ``Host`` must name the server as bound: ``127.0.0.1:PORT``, ``localhost:PORT``,
  ``[::1]:PORT`` or the ``--host`` address with its port; anything else (DNS rebinding) is refused with 403.
- **Origin**: if present it must be ``http://`` + one of those Host values, else 403 (cross-site requests).
- **POST**: ``Content-Type`` must be ``application/json`` (a cross-site form or ``text/plain`` "simple
  request" is refused with 415). ``Content-Length`` must be one plain decimal number (400; 411 if missing
  or if the body is chunked) of at most 1,000,000 bytes (413, the body is not read). A body that does not
  arrive within the socket timeout (``request_timeout``, 30 s) is answered 408.
- **JSON only**: requests holding ``NaN``/``Infinity`` or numbers that overflow to infinity are refused with
  400; answers are standard JSON (a result holding a non-finite number becomes a 500 error).
- **Bounded model time**: each generation stops after ``time_limit`` seconds (``truncated_by_time`` says
  so), and a request waits at most ``lock_timeout`` seconds for the model before a 503 "busy" answer.
- Other methods get 405; no CORS headers are ever sent; any unexpected exception becomes a 500
  ``{"error": "internal error: ..."}``; files under ``/dash/`` never leave their dashboard folder.
"""

from __future__ import annotations

import json
import math
import mimetypes
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import jinja2
import torch

from ..errors import LlmriError
from ..hooks import Add
from ..progress import say
from .autointerp import cheap_labels
from .stats import encode_rows


class ExplorerError(LlmriError):
    """A request the explorer cannot serve (shown in the page)."""


class ExplorerBusy(ExplorerError):
    """The model stayed busy with another request for longer than the explorer's ``lock_timeout``."""


@dataclass
class Loaded:
    """One dictionary the explorer shows."""

    name: str
    d: object
    labels: dict[int, str]
    dashboard: Path | None
    """Its dashboard site folder, if one was written (served under /dash/{k}/)."""


class Explorer:
    """The explorer's model-side logic (usable without the server).

    ``time_limit`` (seconds) bounds each generation; ``lock_timeout`` (seconds, default: long enough for one
    steering request, ``2 * time_limit + 5``) bounds the wait for the model while another request uses it."""

    def __init__(self, model, dictionaries: list[Loaded], max_tokens: int = 256, max_new_tokens: int = 64,
                 time_limit: float = 60.0, lock_timeout: float | None = None):
        self.model, self.dicts = model, dictionaries
        self.max_tokens, self.max_new_tokens = max_tokens, max_new_tokens
        self.time_limit = time_limit
        self.lock_timeout = 2 * time_limit + 5 if lock_timeout is None else lock_timeout
        self.lock = threading.Lock()

    @contextmanager
    def _model(self):
        """Hold the model lock, waiting at most ``lock_timeout`` seconds for it."""
        if not self.lock.acquire(timeout=self.lock_timeout):
            raise ExplorerBusy("the model is busy with another request", "try again in a moment")
        try:
            yield
        finally:
            self.lock.release()

    def _ids(self, prompt) -> torch.Tensor:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ExplorerError("the prompt is empty", "type some text")
        ids = self.model.tokenize(prompt).input_ids
        if ids.shape[1] > self.max_tokens:
            raise ExplorerError(f"the prompt is {ids.shape[1]} tokens long",
                                f"use at most {self.max_tokens} tokens (llmri serve --max-tokens raises the limit)")
        return ids.to(self.model.device)

    def _dict(self, k) -> Loaded:
        if not isinstance(k, int) or not 0 <= k < len(self.dicts):
            raise ExplorerError(f"unknown dictionary {k!r}", f"choose one of 0..{len(self.dicts) - 1}")
        return self.dicts[k]

    @torch.no_grad()
    def analyze(self, prompt: str, top: int = 5) -> dict:
        """Tokens, ‖resid_post‖ per layer × token, and each token's top features per dictionary."""
        ids = self._ids(prompt)
        L = self.model.n_layers
        points = [f"resid_post.{l}" for l in range(L)] + [p for x in self.dicts for p in x.d.cfg.in_points]
        with self._model():
            acts = self.model.capture(ids, list(dict.fromkeys(points)))
        norms = torch.stack([acts[f"resid_post.{l}"][0].float().norm(dim=-1) for l in range(L)])
        out = {"tokens": self.model.token_strings(ids[0]), "norms": [[round(v, 2) for v in row] for row in norms.tolist()],
               "dictionaries": []}
        for k, x in enumerate(self.dicts):
            rows, feats, vals = encode_rows(x.d, {p: acts[p][0].float() for p in x.d.cfg.in_points})
            per_token = []
            for t in range(ids.shape[1]):
                sel = rows == t
                v, order = vals[sel].sort(descending=True)
                f = feats[sel][order][:top]
                per_token.append([[int(i), round(float(a), 3), x.labels.get(int(i), ""), self._link(k, int(i))]
                                  for i, a in zip(f, v[:top])])
            out["dictionaries"].append({"name": x.name, "features": per_token})
        return out

    def _link(self, k: int, i: int) -> str | None:
        x = self.dicts[k]
        if x.dashboard is None or not (x.dashboard / "data" / "f" / f"{i}.js").exists():
            return None
        return f"/dash/{k}/index.html#f{i}"

    def _edits(self, x: Loaded, feature: int, coefficient: float, mode: str) -> dict:
        d = x.d
        if mode == "add":
            return {p: Add(w.detach(), coefficient) for p, w in d.feature_decoder(feature).items()}
        if mode == "clamp":
            if d.cfg.kind != "sae":
                raise ExplorerError(f"clamping needs an SAE (this is a {d.cfg.kind})", "use mode 'add'")
            point = d.cfg.in_points[0]
            w = d.decoder_directions()[feature].detach()

            def clamp(h: torch.Tensor) -> torch.Tensor:
                flat = h.reshape(-1, h.shape[-1]).float()
                rows, feats, vals = encode_rows(d, {point: flat})
                now = torch.zeros(len(flat), device=h.device)
                sel = feats == feature
                now[rows[sel]] = vals[sel]
                return h + ((coefficient - now)[:, None] * w).view(h.shape).to(h.dtype)

            return {point: clamp}
        raise ExplorerError(f"unknown steering mode {mode!r}", "use 'add' or 'clamp'")

    @torch.no_grad()
    def steer(self, prompt: str, dictionary: int, feature, coefficient, mode: str = "add", max_new_tokens: int = 32) -> dict:
        """Greedy continuations without and with the edit (applied at every position)."""
        ids = self._ids(prompt)
        x = self._dict(dictionary)
        if not isinstance(feature, int) or not 0 <= feature < x.d.n_latents:
            raise ExplorerError(f"unknown feature {feature!r} of {x.name}", f"choose a feature in 0..{x.d.n_latents - 1}")
        try:
            coefficient = float(coefficient)
        except (TypeError, ValueError):
            raise ExplorerError(f"the coefficient {coefficient!r} is not a number", "type a number such as 8 or -4") from None
        if not math.isfinite(coefficient):
            raise ExplorerError(f"the coefficient {coefficient!r} is not a finite number", "type a number such as 8 or -4")
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= self.max_new_tokens:
            raise ExplorerError(f"cannot generate {max_new_tokens!r} tokens", f"ask for 1..{self.max_new_tokens}")
        edits = self._edits(x, feature, coefficient, mode)
        with self._model():
            plain, cut = self._generate(ids, max_new_tokens)
            with self.model.intervene(edits):
                steered, steered_cut = self._generate(ids, max_new_tokens)
        return {"prompt": prompt, "original": plain, "steered": steered, "feature": feature, "dictionary": x.name,
                "coefficient": coefficient, "mode": mode, "truncated_by_time": cut or steered_cut}

    def _generate(self, ids: torch.Tensor, n: int) -> tuple[str, bool]:
        """A greedy continuation of at most ``n`` tokens and ``time_limit`` seconds, and whether time cut it short."""
        tok = self.model.tokenizer
        out = self.model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                     max_time=self.time_limit,
                                     pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else self.model.bos_id)
        new = out[0, ids.shape[1]:]
        eos = self.model.hf.generation_config.eos_token_id
        eos = {tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])}
        cut = len(new) < n and (len(new) == 0 or int(new[-1]) not in eos)
        return tok.decode(new, skip_special_tokens=True), cut


def load_explorer(model, paths: list[str | Path], **kw) -> Explorer:
    """An :class:`Explorer` over dictionary folders; a folder's ``dashboard/`` and ``features/`` (from
    ``llmri dashboard``) give the feature links and labels."""
    from ..dictionaries.formats import check_fits
    from .pipeline import load_dictionary, stats_folder
    from .stats import FeatureStats

    loaded = []
    for p in paths:
        p = Path(p)
        d = load_dictionary(p)
        check_fits(d, model)
        d = d.to(model.device)
        labels = {}
        if (stats_folder(p) / "features.json").exists():
            labels = cheap_labels(FeatureStats.load(stats_folder(p)), model.tokenizer)
        site = p / "dashboard" if (p / "dashboard" / "index.html").exists() else None
        loaded.append(Loaded(f"{d.cfg.name} ({p.name})", d, labels, site))
    return Explorer(model, loaded, **kw)


# ---------------------------------------------------------------- HTTP


def _page(explorer: Explorer) -> bytes:
    env = jinja2.Environment(loader=jinja2.PackageLoader("llmri", "templates"), autoescape=True)
    info = {"model": explorer.model.name, "n_layers": explorer.model.n_layers, "max_tokens": explorer.max_tokens,
            "max_new_tokens": explorer.max_new_tokens,
            "dictionaries": [{"name": x.name, "n": x.d.n_latents, "kind": x.d.cfg.kind} for x in explorer.dicts]}
    return env.get_template("explorer.html.j2").render(info=info).encode()


MAX_BODY = 1_000_000
"""Largest request body accepted (bytes)."""


class Refused(Exception):
    """A request refused with an HTTP status (answered as JSON ``{"error": message}``)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def accepted_hosts(host: str, port: int) -> set[str]:
    """The ``Host`` values a request may carry: the loopback names and the bound address, with the port (and
    also without it on port 80, where browsers leave it out)."""
    names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
    return {n.lower() + suffix for n in names for suffix in ([f":{port}", ""] if port == 80 else [f":{port}"])}


def check_origin(headers, hosts: set[str]) -> None:
    """Refuse (403) a request whose ``Host`` is not one of ``hosts`` (DNS rebinding), or that carries an
    ``Origin`` other than ``http://`` + one of ``hosts`` (a cross-site request)."""
    host = (headers.get("Host") or "").strip().lower()
    if host not in hosts:
        raise Refused(403, f"the Host header {host!r} does not name this server — open the explorer at http://{min(hosts)}/")
    origin = headers.get("Origin")
    if origin is not None and origin.strip().lower() not in {f"http://{h}" for h in hosts}:
        raise Refused(403, f"cross-origin requests (from {origin!r}) are refused")


def check_content_type(headers) -> None:
    """Refuse (415) a POST that is not ``application/json``: browsers send the other types (forms,
    ``text/plain``) cross-site without asking the server first."""
    if headers.get_content_type() != "application/json":
        raise Refused(415, f"the request's Content-Type is {headers.get('Content-Type')!r} — send application/json")


def body_length(headers) -> int:
    """The announced body size: ``Content-Length`` must be one decimal number (400; 411 when missing or for a
    chunked body) of at most :data:`MAX_BODY` (else 413, before any of the body is read)."""
    values = headers.get_all("Content-Length") or []
    if headers.get("Transfer-Encoding") or not values:
        raise Refused(411, "the request has no Content-Length — send one")
    if len(values) > 1 or not re.fullmatch(r"[0-9]{1,20}", values[0].strip()):
        raise Refused(400, f"the Content-Length {', '.join(values)!r} is not a byte count")
    n = int(values[0])
    if n > MAX_BODY:
        raise Refused(413, f"the request is {n} bytes, more than {MAX_BODY} — send a shorter prompt")
    return n


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise Refused(400, f"the number {text[:40]} is too large — send finite numbers")
    return x


def _no_constant(name: str):
    raise Refused(400, f"{name} is not a JSON number — send finite numbers")


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object; ``NaN``, ``Infinity`` and numbers overflowing to infinity are
    refused (400), as is anything that is not a standard JSON object."""
    try:
        body = json.loads(raw or b"{}", parse_constant=_no_constant, parse_float=_finite_float)
    except ValueError:
        raise Refused(400, "the request is not JSON — send a JSON object") from None
    if not isinstance(body, dict):
        raise Refused(400, "the request is not a JSON object — send a JSON object")
    return body


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765,
                request_timeout: float = 30.0) -> ThreadingHTTPServer:
    """The explorer's HTTP server (not started), enforcing the rules of this module's docstring;
    ``request_timeout`` (seconds) is the socket timeout of each connection."""
    page = _page(explorer)

    class Handler(BaseHTTPRequestHandler):
        timeout = request_timeout  # a client that stalls mid-request frees its thread after this

        def log_message(self, *args):  # quiet: the CLI prints one line per request instead
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj) -> None:
            try:
                body = json.dumps(obj, allow_nan=False)
            except ValueError:
                code, body = 500, json.dumps({"error": "internal error: the result holds a non-finite number"})
            self._send(code, body.encode(), "application/json")

        def send_error(self, code, message=None, explain=None):  # the base class's own errors, as JSON
            self.close_connection = True
            self._json(code, {"error": message or HTTPStatus(code).phrase})

        def _answer(self, route) -> None:
            """Check the origin, run ``route`` and answer any failure as JSON."""
            try:
                check_origin(self.headers, self.server.accepted_hosts)
                route()
            except Refused as err:
                self.close_connection = True
                self._json(err.status, {"error": str(err)})
            except ExplorerBusy as err:
                self._json(503, {"error": str(err)})
            except LlmriError as err:
                self._json(400, {"error": str(err)})
            except (ConnectionError, TimeoutError):  # the client left: nobody to answer
                self.close_connection = True
            except Exception as err:  # a bug: still answer, as JSON
                self._json(500, {"error": f"internal error: {type(err).__name__}: {err}"})

        def do_GET(self):
            self._answer(self._get)

        def do_POST(self):
            self._answer(self._post)

        def _not_allowed(self):
            self._answer(lambda: self._json(405, {"error": f"{self.command} is not allowed — use GET or POST"}))

        do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

        def _get(self):
            path = unquote(urlparse(self.path).path)
            if path in ("/", "/index.html"):
                return self._send(200, page, "text/html; charset=utf-8")
            if path.startswith("/dash/"):
                parts = path.split("/", 3)
                if len(parts) == 4 and parts[2].isdigit() and int(parts[2]) < len(explorer.dicts):
                    root = explorer.dicts[int(parts[2])].dashboard
                    if root is not None:
                        f = (root / parts[3]).resolve()
                        if f.is_file() and root.resolve() in f.parents:
                            ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
                            return self._send(200, f.read_bytes(), ctype)
            self._json(404, {"error": f"nothing at {path}"})

        def _post(self):
            path = urlparse(self.path).path
            check_content_type(self.headers)
            n = body_length(self.headers)
            try:
                raw = self.rfile.read(n)
            except TimeoutError:
                raise Refused(408, f"the request body did not arrive within {request_timeout:g} s") from None
            if len(raw) < n:
                raise Refused(400, f"the request body ended after {len(raw)} of {n} bytes")
            body = parse_json(raw)
            if path == "/api/analyze":
                return self._json(200, explorer.analyze(body.get("prompt")))
            if path == "/api/steer":
                return self._json(200, explorer.steer(body.get("prompt"), body.get("dictionary", 0), body.get("feature"),
                                                      body.get("coefficient"), body.get("mode", "add"),
                                                      body.get("max_new_tokens", 32)))
            self._json(404, {"error": f"no API at {path}"})

    server = ThreadingHTTPServer((host, port), Handler)
    server.accepted_hosts = accepted_hosts(host, server.server_address[1])
    return server


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765) -> None:
    server = make_server(explorer, host, port)
    say(f"llmri explorer on http://{host}:{server.server_address[1]}/ (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
