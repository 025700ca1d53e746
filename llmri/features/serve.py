"""``llmri serve``: a local text explorer (standard-library HTTP server, 127.0.0.1 by default).

Type a prompt and see, per layer and token, the residual-stream norm, and per token the top active
features of each loaded dictionary (linked to their dashboards); steer generation by adding a feature's
decoder vector with a coefficient, or by clamping the feature's activation, and compare the original and
steered continuations. Every bad input becomes a JSON ``{"error": ...}`` with status 400 that the page
shows; the model is used by one request at a time.
"""

from __future__ import annotations

import json
import mimetypes
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import jinja2
import torch

from ..errors import LlmriError
from ..hooks import Add
from ..progress import say
from .autointerp import cheap_labels
from .stats import decoder_directions, encode_rows, feature_decoder


class ExplorerError(LlmriError):
    """A request the explorer cannot serve (shown in the page)."""


@dataclass
class Loaded:
    """One dictionary the explorer shows."""

    name: str
    d: object
    labels: dict[int, str]
    dashboard: Path | None
    """Its dashboard site folder, if one was written (served under /dash/{k}/)."""


class Explorer:
    """The explorer's model-side logic (usable without the server)."""

    def __init__(self, model, dictionaries: list[Loaded], max_tokens: int = 256, max_new_tokens: int = 64):
        self.model, self.dicts = model, dictionaries
        self.max_tokens, self.max_new_tokens = max_tokens, max_new_tokens
        self.lock = threading.Lock()

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
        with self.lock:
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
            return {p: Add(w.detach(), coefficient) for p, w in feature_decoder(d, feature).items()}
        if mode == "clamp":
            if d.cfg.kind != "sae":
                raise ExplorerError(f"clamping needs an SAE (this is a {d.cfg.kind})", "use mode 'add'")
            point = d.cfg.in_points[0]
            w = decoder_directions(d)[feature].detach()

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
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= self.max_new_tokens:
            raise ExplorerError(f"cannot generate {max_new_tokens!r} tokens", f"ask for 1..{self.max_new_tokens}")
        edits = self._edits(x, feature, coefficient, mode)
        with self.lock:
            plain = self._generate(ids, max_new_tokens)
            with self.model.intervene(edits):
                steered = self._generate(ids, max_new_tokens)
        return {"prompt": prompt, "original": plain, "steered": steered, "feature": feature, "dictionary": x.name,
                "coefficient": coefficient, "mode": mode}

    def _generate(self, ids: torch.Tensor, n: int) -> str:
        tok = self.model.tokenizer
        out = self.model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                     pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else self.model.bos_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def load_explorer(model, paths: list[str | Path], **kw) -> Explorer:
    """An :class:`Explorer` over dictionary folders; a folder's ``dashboard/`` and ``features/`` (from
    ``llmri dashboard``) give the feature links and labels."""
    from .pipeline import load_dictionary, stats_folder
    from .stats import FeatureStats

    loaded = []
    for p in paths:
        p = Path(p)
        d = load_dictionary(p).to(model.device)
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


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    page = _page(explorer)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the CLI prints one line per request instead
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj) -> None:
            self._send(code, json.dumps(obj).encode(), "application/json")

        def do_GET(self):
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

        def do_POST(self):
            path = urlparse(self.path).path
            try:
                n = int(self.headers.get("Content-Length") or 0)
                if n > 1_000_000:
                    raise ExplorerError("the request is too large", "send a shorter prompt")
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except ValueError:
                    raise ExplorerError("the request is not JSON", "send a JSON object") from None
                if not isinstance(body, dict):
                    raise ExplorerError("the request is not a JSON object", "send a JSON object")
                if path == "/api/analyze":
                    return self._json(200, explorer.analyze(body.get("prompt")))
                if path == "/api/steer":
                    return self._json(200, explorer.steer(body.get("prompt"), body.get("dictionary", 0), body.get("feature"),
                                                          body.get("coefficient"), body.get("mode", "add"),
                                                          body.get("max_new_tokens", 32)))
                self._json(404, {"error": f"no API at {path}"})
            except LlmriError as err:
                self._json(400, {"error": str(err)})

    return ThreadingHTTPServer((host, port), Handler)


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765) -> None:
    server = make_server(explorer, host, port)
    say(f"llmri explorer on http://{host}:{server.server_address[1]}/ (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
