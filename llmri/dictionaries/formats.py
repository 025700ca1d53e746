"""Dictionary files: SAELens folders (native), sparsify folders (import), circuit-tracer transcoders (export).

SAELens (v6 schema): ``cfg.json`` + ``sae_weights.safetensors`` (``W_enc`` [d_in, d_sae], ``b_enc``,
``W_dec`` [d_sae, d_out], ``b_dec``, ``threshold`` for JumpReLU, ``W_skip`` [d_out, d_in]) +
``sparsity.safetensors`` (``sparsity`` = log10 feature density). Architectures: ``standard`` (ReLU),
``topk``, ``jumprelu`` (BatchTopK is saved as JumpReLU with its learned threshold), ``transcoder``,
``skip_transcoder``, ``jumprelu_transcoder``, ``jumprelu_skip_transcoder``; SAELens has no TopK transcoder,
so those are written as ``topk_transcoder`` (read by llmri; circuit-tracer's export covers them).
Normalisation is always folded into the weights, so ``normalize_activations`` is ``none``.

sparsify: ``<hookpoint>/cfg.json`` + ``sae.safetensors`` (``encoder.weight`` [n, d_in], ``encoder.bias``,
``W_dec`` [n, d_in], ``b_dec``, optional ``W_skip``); ReLU then top-k; transcoders do not subtract b_dec.

circuit-tracer: ``config.yaml`` + ``layer_{i}.safetensors`` per layer (``W_enc``/``W_dec`` [d_tc, d_model],
``b_enc``, ``b_dec``, ``activation_function.threshold``, ``W_skip``, ``k``) or, for a CLT,
``W_enc_{i}.safetensors`` (``W_enc_i``, ``b_enc_i``, ``b_dec_i``, ``threshold_i``) and
``W_dec_{i}.safetensors`` (``W_dec_i`` [d_tc, L − i, d_model]).

llmri's own crosscoders and CLTs are saved as ``cfg.json`` (``architecture`` = crosscoder / clt, plus the
full DictConfig) + ``weights.safetensors``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..atomic import atomic_path, write_json
from ..hookpoints import TL_GLOBAL, TL_NAMES, layer_of
from .clt import CrossLayerTranscoder
from .coder import SparseCoder
from .config import DictConfig, DictionaryError
from .protocol import Dictionary

CFG, WEIGHTS, SPARSITY = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"
LLMRI_WEIGHTS = "weights.safetensors"
SAELENS_VERSION = "6.0.0"  # the schema version we write (v6: metadata holds hook names)

_TO_TL = {v: k for k, v in (TL_NAMES | TL_GLOBAL).items()}  # canonical point kind → TransformerLens name


def tl_name(point: str) -> str:
    """TransformerLens name of a canonical point (SAELens ``hook_name``)."""
    if point in _TO_TL:
        return _TO_TL[point]
    kind, layer = point.split(".")
    return f"blocks.{layer}.{_TO_TL[kind]}"


def from_tl(name: str) -> str:
    """Canonical point of a TransformerLens / circuit-tracer hook name."""
    if name in TL_GLOBAL:
        return TL_GLOBAL[name]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    inverse = TL_NAMES | {"mlp.hook_in": "mlp_in", "mlp.hook_out": "mlp_out"}
    if not m or m.group(2) not in inverse:
        raise DictionaryError(f"hook '{name}' has no llmri equivalent",
                              "llmri reads dictionaries on resid_pre/attn_out/resid_mid/mlp_in/mlp_out/resid_post")
    return f"{inverse[m.group(2)]}.{m.group(1)}"


# ---------------------------------------------------------------- saving


def save(d: Dictionary, folder: str | Path, *, density: Tensor | None = None, meta: dict | None = None,
         extra: dict[str, dict] | None = None) -> Path:
    """Save a trained dictionary (scales folded first) in its native format, plus ``extra`` JSON files
    ({file name: content}) in the same atomic write; returns the folder."""
    d.fold_scales()
    if d.cfg.kind in ("sae", "transcoder"):
        return save_saelens(d, folder, density=density, meta=meta, extra=extra)
    folder = Path(folder)
    with atomic_path(folder, directory=True, kind="dictionary") as tmp:
        tensors = {k: v.detach().contiguous().cpu() for k, v in d.state_dict().items()}
        save_file(tensors, str(tmp / LLMRI_WEIGHTS))
        write_json(tmp / CFG, {"architecture": d.cfg.kind, "llmri": d.cfg.to_dict(), "metadata": meta or {}})
        _write_extra(tmp, density, extra)
    return folder


def _write_extra(tmp: Path, density: Tensor | None, extra: dict[str, dict] | None) -> None:
    if density is not None:
        save_file({"sparsity": (density.float().cpu() + 1e-10).log10()}, str(tmp / SPARSITY))
    for name, content in (extra or {}).items():
        write_json(tmp / name, content)


def _saelens_arch(cfg: DictConfig) -> str:
    if cfg.kind == "sae":
        return {"topk": "topk", "relu": "standard"}.get(cfg.arch, "jumprelu")
    base = "skip_transcoder" if cfg.skip else "transcoder"
    return {"relu": base, "topk": "topk_" + base}.get(cfg.arch, "jumprelu_" + base)


def save_saelens(d: SparseCoder, folder: str | Path, *, density: Tensor | None = None, meta: dict | None = None,
                 extra: dict[str, dict] | None = None) -> Path:
    cfg = d.cfg
    if float(d.in_scale.prod()) != 1.0 or float(d.out_scale.prod()) != 1.0:
        d.fold_scales()
    arch = _saelens_arch(cfg)
    weights = {"W_enc": d.W_enc.detach().t(), "b_enc": d.b_enc.detach(), "W_dec": d.W_dec.detach(), "b_dec": d.b_dec.detach()}
    th = d.thresholds()
    if cfg.arch != "topk" and cfg.arch != "relu":
        weights["threshold"] = th.detach()
    if d.W_skip is not None:
        weights["W_skip"] = d.W_skip.detach()
    out = {
        "d_in": cfg.d_in,
        "d_sae": cfg.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": arch,
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": SAELENS_VERSION,
            "model_name": cfg.model_name,
            "hook_name": tl_name(cfg.in_points[0]),
            "hook_head_index": None,
            **({"hook_name_out": tl_name(cfg.out_points[0])} if cfg.kind == "transcoder" else {}),
            "prepend_bos": True,
            "exclude_special_tokens": True,
            "seqpos_slice": [1, None],
            "model_from_pretrained_kwargs": {},
            "training_architecture": cfg.arch,
            **(meta or {}),
            "llmri": cfg.to_dict(),
        },
    }
    if cfg.kind == "transcoder":
        out["d_out"] = cfg.d_out
    if cfg.arch == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    folder = Path(folder)
    with atomic_path(folder, directory=True, kind="dictionary") as tmp:
        save_file({k: v.contiguous().float().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS))
        write_json(tmp / CFG, out)
        _write_extra(tmp, density, extra)
    return folder


# ---------------------------------------------------------------- loading


def _bad(folder: Path, problem: str) -> DictionaryError:
    return DictionaryError(f"{folder}: {problem}", "restore the folder from the tool that wrote it, or retrain/re-export it")


def read_config(path: Path) -> dict:
    """A dictionary's JSON config; a missing, truncated or non-object file is a :class:`DictionaryError`."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise _bad(path.parent, f"cannot read {path.name} ({err})") from None
    except json.JSONDecodeError as err:
        raise _bad(path.parent, f"{path.name} is not valid JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise _bad(path.parent, f"{path.name} holds a JSON {type(cfg).__name__}, not an object")
    return cfg


def read_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """A safetensors file; a missing, truncated or corrupted one is a :class:`DictionaryError`."""
    if not path.is_file():
        raise _bad(path.parent, f"{path.name} is missing")
    try:
        w = load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error type for a malformed file
        raise _bad(path.parent, f"{path.name} is not a readable safetensors file ({err})") from None
    for name, t in w.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise _bad(path.parent, f"'{name}' in {path.name} holds NaN or infinite values")
    return w


def _config(folder: Path, **fields) -> DictConfig:
    """A DictConfig from values read out of a folder; an invalid value names the folder."""
    try:
        return DictConfig(**fields)
    except DictionaryError as err:
        raise _bad(folder, f"its config does not describe a valid dictionary: {err.problem}") from None


def _tensor(folder: Path, w: dict[str, Tensor], name: str, shape: tuple[int, ...], why: str) -> Tensor:
    """``w[name]`` if present with ``shape``; else a DictionaryError naming the tensor and the config fields."""
    if name not in w:
        raise _bad(folder, f"the weights lack '{name}'")
    t = w[name]
    if tuple(t.shape) != tuple(shape):
        raise _bad(folder, f"'{name}' has shape {list(t.shape)} but the config ({why}) needs {list(shape)}")
    return t


def _fill(folder: Path, module: torch.nn.Module, values: dict[str, Tensor], why: str) -> None:
    """Copy ``values`` ({parameter name: tensor, already checked or to be checked}) into ``module``'s
    parameters, each checked against the parameter's shape."""
    params = dict(module.named_parameters()) | dict(module.named_buffers())
    with torch.no_grad():
        for name, t in values.items():
            p = params[name]
            _tensor(folder, {name: t}, name, tuple(p.shape), why)
            p.copy_(t)


def check_fits(d: Dictionary, model) -> None:
    """Refuse a dictionary whose hook points or widths do not exist in ``model`` (before any matmul fails)."""
    for p in d.cfg.in_points + d.cfg.out_points:
        model.resolve(p)
    width = {p: model.vocab_size if p == "logits" else model.d_model for p in d.cfg.in_points + d.cfg.out_points}
    wrong = [(p, w, d.cfg.d_in if p in d.cfg.in_points else d.cfg.d_out) for p, w in width.items()
             if w != (d.cfg.d_in if p in d.cfg.in_points else d.cfg.d_out)]
    if wrong:
        p, w, have = wrong[0]
        raise DictionaryError(f"{d.cfg.name} has width {have} at {p}, but {p} of {model.name} has width {w}",
                              "use the model the dictionary was trained on (--model), or another dictionary")


def load(folder: str | Path, device: str | torch.device = "cpu") -> Dictionary:
    """Load an llmri/SAELens folder, a sparsify hookpoint folder, or a circuit-tracer export."""
    folder = Path(folder)
    if (folder / "config.yaml").exists():
        return load_circuit_tracer(folder, device=device)
    if not (folder / CFG).exists():
        raise DictionaryError(f"no dictionary at {folder} (cfg.json missing)",
                              "point at a folder written by `llmri train`, SAELens or sparsify")
    cfg = read_config(folder / CFG)
    if (folder / "sae.safetensors").exists():
        return load_sparsify(folder, device=device)
    if cfg.get("architecture") in ("crosscoder", "clt"):
        if not isinstance(cfg.get("llmri"), dict):
            raise _bad(folder, "cfg.json lacks the 'llmri' object of a crosscoder/CLT")
        dc = _config(folder, **{k: v for k, v in cfg["llmri"].items() if k in DictConfig.__dataclass_fields__})
        cls = CrossLayerTranscoder if dc.kind == "clt" else SparseCoder
        d = cls(dc, device=device)
        w = read_weights(folder / LLMRI_WEIGHTS, device)
        expected = dict(d.state_dict())
        missing = sorted(set(expected) - set(w))
        if missing:
            raise _bad(folder, f"the weights lack {', '.join(missing[:3])}")
        _fill(folder, d, {k: w[k] for k in expected}, f"kind {dc.kind}, d_in {dc.d_in}, n_latents {dc.n_latents}")
        return d.eval()
    return load_saelens(folder, device=device)


def load_saelens(folder: str | Path, device: str | torch.device = "cpu") -> SparseCoder:
    folder = Path(folder)
    cfg = read_config(folder / CFG)
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        raise _bad(folder, "cfg.json's 'metadata' is not an object")
    arch = cfg.get("architecture", "standard")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "expected_average_only_in", None, False):
        raise DictionaryError(f"{folder} uses normalize_activations='{norm}' (per-token normalisation)",
                              "llmri reads SAEs whose normalisation is folded into the weights")
    kinds = {"standard": ("sae", "relu"), "topk": ("sae", "topk"), "jumprelu": ("sae", "jumprelu"),
             "transcoder": ("transcoder", "relu"), "skip_transcoder": ("transcoder", "relu"),
             "jumprelu_transcoder": ("transcoder", "jumprelu"), "jumprelu_skip_transcoder": ("transcoder", "jumprelu"),
             "topk_transcoder": ("transcoder", "topk"), "topk_skip_transcoder": ("transcoder", "topk")}
    if arch not in kinds:
        raise DictionaryError(f"SAELens architecture '{arch}' in {folder} is not supported",
                              f"llmri reads {', '.join(kinds)}")
    kind, act = kinds[arch]
    hook_in = meta.get("hook_name") or cfg.get("hook_name")
    hook_out = meta.get("hook_name_out") or cfg.get("hook_name_out") or hook_in
    if not isinstance(hook_in, str) or not isinstance(hook_out, str):
        raise _bad(folder, "cfg.json names no hook (metadata.hook_name)")
    for key in ("d_in", "d_sae"):
        if key not in cfg:
            raise _bad(folder, f"cfg.json lacks '{key}'")
    d_in, n = cfg["d_in"], cfg["d_sae"]
    known = meta.get("llmri") if isinstance(meta.get("llmri"), dict) else {}
    w = read_weights(folder / WEIGHTS, device)
    dc = _config(folder, kind=kind, arch=act, in_points=[from_tl(hook_in)], out_points=[from_tl(hook_out)], d_in=d_in,
                 d_out=cfg.get("d_out", d_in), n_latents=n, k=cfg.get("k", 0) or known.get("k", 32),
                 skip="W_skip" in w, model_name=str(meta.get("model_name", "")),
                 **{k: v for k, v in known.items() if k in ("sparsity", "sparsity_coeff", "tanh_c", "jumprelu_bandwidth")})
    if kind == "sae" and not cfg.get("apply_b_dec_to_input", True):
        raise DictionaryError(f"{folder} has apply_b_dec_to_input=false for an SAE", "llmri SAEs subtract b_dec")
    d = SparseCoder(dc, device=device)
    why = f"d_in {dc.d_in}, d_sae {dc.n_latents}" + (f", d_out {dc.d_out}" if dc.d_out != dc.d_in else "")
    W_enc = _tensor(folder, w, "W_enc", (dc.d_in, dc.n_latents), why).t()
    b_enc = _tensor(folder, w, "b_enc", (dc.n_latents,), why)
    W_dec = _tensor(folder, w, "W_dec", (dc.n_latents, dc.d_out), why)
    if cfg.get("rescale_acts_by_decoder_norm"):  # fold: h·‖W_dec‖ then f/‖W_dec‖ at decode
        norms = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    values = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": w.get("b_dec")}
    if d.W_skip is not None:
        values["W_skip"] = w["W_skip"]
    if act == "jumprelu":
        values["log_threshold"] = _tensor(folder, w, "threshold", (dc.n_latents,), why).clamp_min(0).log()
    if values["b_dec"] is None:
        raise _bad(folder, "the weights lack 'b_dec'")
    _fill(folder, d, values, why)
    return d.eval()


def load_sparsify(folder: str | Path, device: str | torch.device = "cpu") -> SparseCoder:
    """A sparsify hookpoint folder; the hookpoint is the folder name (``layers.5`` → resid_post.5, with
    ``transcode`` ``layers.5.mlp`` → mlp_in.5 → mlp_out.5)."""
    folder = Path(folder)
    cfg = read_config(folder / CFG)
    if cfg.get("activation", "topk") != "topk" or cfg.get("signed"):
        raise DictionaryError(f"sparsify activation '{cfg.get('activation')}' in {folder} is not supported",
                              "llmri reads sparsify TopK coders")
    w = read_weights(folder / "sae.safetensors", device)
    if "encoder.weight" not in w or w["encoder.weight"].dim() != 2:
        raise _bad(folder, "sae.safetensors lacks a 2-d 'encoder.weight'")
    n, d_in = w["encoder.weight"].shape
    hook = folder.name
    m = re.fullmatch(r"(?:.*\.)?(?:layers|h)\.(\d+)(\.mlp)?", hook)
    if not m:
        raise DictionaryError(f"cannot tell the hook point of sparsify folder '{hook}'",
                              "rename the folder to its hookpoint, e.g. layers.5 or layers.5.mlp")
    layer, mlp = m.group(1), bool(m.group(2))
    if cfg.get("transcode"):
        kind, ins, outs = "transcoder", [f"mlp_in.{layer}"], [f"mlp_out.{layer}"]
    else:
        kind, ins = "sae", [f"mlp_out.{layer}" if mlp else f"resid_post.{layer}"]
        outs = ins
    dc = _config(folder, kind=kind, arch="topk", in_points=ins, out_points=outs, d_in=d_in, n_latents=n,
                 k=cfg.get("k", 32), skip="W_skip" in w)
    d = SparseCoder(dc, device=device)
    names = {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec", "W_skip": "W_skip"}
    missing = [v for k, v in names.items() if v not in w and (k != "W_skip")]
    if missing:
        raise _bad(folder, f"sae.safetensors lacks {', '.join(missing)}")
    _fill(folder, d, {k: w[v] for k, v in names.items() if v in w}, f"d_in {d_in}, {n} latents")
    return d.eval()


def load_set(path: str | Path, device: str | torch.device = "cpu") -> list[Dictionary]:
    """A CLT (→ [it]), a circuit-tracer export, one dictionary folder (→ [it]) or a run folder holding one
    dictionary folder per layer (``llmri train --layers all``), ordered by the layer they read."""
    path = Path(path)
    if (path / CFG).exists() or (path / "config.yaml").exists():
        loaded = load(path, device=device)
        return loaded if isinstance(loaded, list) else [loaded]
    folders = sorted(p for p in path.iterdir() if (p / CFG).exists()) if path.is_dir() else []
    if not folders:
        raise DictionaryError(f"no dictionaries in {path}", "point at a run folder of `llmri train`, a CLT folder "
                              "or a circuit-tracer export")
    dicts = [load(f, device=device) for f in folders]
    return sorted(dicts, key=lambda d: layer_of(d.cfg.in_points[0]) or 0)


# ---------------------------------------------------------------- circuit-tracer


def export_circuit_tracer(dicts: list[Dictionary] | Dictionary, folder: str | Path, *,
                          model_name: str = "", n_layers: int | None = None) -> Path:
    """Write a per-layer transcoder set (one transcoder per layer, in layer order) or a CLT in
    circuit-tracer's format. Hooks: ``mlp.hook_in`` → ``mlp.hook_out`` (our mlp_in → mlp_out), the names
    circuit-tracer resolves in both its backends (``ln2.hook_normalized`` is the norm's output *before* its
    gain in TransformerLens with ``fold_ln=False``, and unknown to its nnsight backend). circuit-tracer
    0.5 reads ReLU/JumpReLU (and BatchTopK, saved with its threshold) transcoder sets; it has no TopK
    activation for them, so TopK sets are written with a ``k`` entry only llmri reads."""
    folder = Path(folder)
    items = [dicts] if isinstance(dicts, Dictionary) else list(dicts)
    clt = items[0].cfg.kind == "clt"  # the two file layouts: a CLT's per-layer W_enc_i/W_dec_i, or layer_i per transcoder
    for d in items:
        d.fold_scales()
        if d.cfg.kind not in ("transcoder", "clt"):
            raise DictionaryError(f"circuit-tracer export needs transcoders or a CLT, not a {d.cfg.kind}",
                                  "train with --kind transcoder or --kind clt")
    arch = items[0].cfg.arch
    yaml = [f"model_name: {json.dumps(model_name or items[0].cfg.model_name)}",
            f"model_kind: {'cross_layer_transcoder' if clt else 'transcoder_set'}",
            "feature_input_hook: mlp.hook_in", "feature_output_hook: mlp.hook_out",
            f"activation: {'topk' if arch == 'topk' else 'relu'}"]
    if arch == "topk":
        yaml.append(f"k: {items[0].cfg.k}")
    with atomic_path(folder, directory=True, kind="circuit-tracer export") as tmp:
        if clt:
            d = items[0]
            for i in range(d.n_layers):
                enc = {f"W_enc_{i}": d.W_enc[i], f"b_enc_{i}": d.b_enc[i], f"b_dec_{i}": d.b_dec[i]}
                th = d.thresholds(i)
                if th is not None and arch != "relu":
                    enc[f"threshold_{i}"] = th
                save_file({k: v.detach().float().contiguous().cpu() for k, v in enc.items()}, str(tmp / f"W_enc_{i}.safetensors"))
                save_file({f"W_dec_{i}": d.W_dec[i].detach().float().contiguous().cpu()}, str(tmp / f"W_dec_{i}.safetensors"))
        else:
            layers = [layer_of(d.cfg.in_points[0]) for d in items]
            if layers != list(range(len(layers))) or (n_layers and len(layers) != n_layers):
                raise DictionaryError(f"a transcoder set needs one transcoder for every layer 0..L-1, got layers {layers}",
                                      "train transcoders with --layers all")
            for i, d in enumerate(items):
                t = {"W_enc": d.W_enc, "W_dec": d.W_dec, "b_enc": d.b_enc, "b_dec": d.b_dec}
                th = d.thresholds()
                if th is not None and arch != "relu":
                    t["activation_function.threshold"] = th
                if d.W_skip is not None:
                    t["W_skip"] = d.W_skip
                tensors = {k: v.detach().float().contiguous().cpu() for k, v in t.items()}
                if arch == "topk":
                    tensors["k"] = torch.tensor(d.cfg.k)
                save_file(tensors, str(tmp / f"layer_{i}.safetensors"))
        (tmp / "config.yaml").write_text("\n".join(yaml) + "\n")
    return folder


def _read_yaml(path: Path) -> dict:
    """The flat ``key: value`` YAML circuit-tracer configs use (values parsed as JSON where possible)."""
    out = {}
    for line in path.read_text().splitlines():
        if ":" in line and not line.startswith((" ", "-", "#")):
            key, _, value = line.partition(":")
            value = value.strip()
            try:
                out[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                out[key.strip()] = value
    return out


def load_circuit_tracer(folder: str | Path, device: str | torch.device = "cpu"):
    """Read a circuit-tracer transcoder set (→ list of transcoders) or CLT (→ CrossLayerTranscoder)."""
    folder = Path(folder)
    cfg = _read_yaml(folder / "config.yaml")
    act = cfg.get("activation", "relu")
    if cfg.get("model_kind") == "cross_layer_transcoder":
        L = len(list(folder.glob("W_enc_*.safetensors")))
        if L == 0:
            raise _bad(folder, "a cross_layer_transcoder without W_enc_0.safetensors")
        enc = [read_weights(folder / f"W_enc_{i}.safetensors", device) for i in range(L)]
        dec = [read_weights(folder / f"W_dec_{i}.safetensors", device) for i in range(L)]
        if "W_enc_0" not in enc[0] or enc[0]["W_enc_0"].dim() != 2:
            raise _bad(folder, "W_enc_0.safetensors lacks a 2-d 'W_enc_0'")
        n, d_model = enc[0]["W_enc_0"].shape
        has_th = "threshold_0" in enc[0]
        arch = "topk" if act == "topk" else ("jumprelu" if has_th else "relu")
        dc = _config(folder, kind="clt", arch=arch, in_points=[f"mlp_in.{i}" for i in range(L)],
                     out_points=[f"mlp_out.{i}" for i in range(L)], d_in=d_model, n_latents=n,
                     k=cfg.get("k", 32), model_name=str(cfg.get("model_name", "")))
        d = CrossLayerTranscoder(dc, device=device)
        why = f"{L} layers, d_model {d_model}, {n} features per layer"
        with torch.no_grad():
            for i in range(L):
                d.W_enc[i].copy_(_tensor(folder, enc[i], f"W_enc_{i}", tuple(d.W_enc[i].shape), why))
                d.b_enc[i].copy_(_tensor(folder, enc[i], f"b_enc_{i}", tuple(d.b_enc[i].shape), why))
                d.b_dec[i].copy_(_tensor(folder, enc[i], f"b_dec_{i}", tuple(d.b_dec[i].shape), why))
                d.W_dec[i].copy_(_tensor(folder, dec[i], f"W_dec_{i}", tuple(d.W_dec[i].shape), why))
                if arch == "jumprelu":
                    th = _tensor(folder, enc[i], f"threshold_{i}", tuple(d.log_threshold[i].shape), why)
                    d.log_threshold[i].copy_(th.clamp_min(0).log())
        return d.eval()
    files = sorted(folder.glob("layer_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]) if p.stem.split("_")[1].isdigit() else -1)
    out = []
    for f in files:
        if not f.stem.split("_")[1].isdigit():
            raise _bad(folder, f"cannot tell the layer of {f.name}")
        t = read_weights(f, device)
        i = int(f.stem.split("_")[1])
        if "W_enc" not in t or t["W_enc"].dim() != 2:
            raise _bad(folder, f"{f.name} lacks a 2-d 'W_enc'")
        n, d_model = t["W_enc"].shape
        arch = "topk" if "k" in t or act == "topk" else ("jumprelu" if "activation_function.threshold" in t else "relu")
        dc = _config(folder, kind="transcoder", arch=arch, in_points=[f"mlp_in.{i}"], out_points=[f"mlp_out.{i}"],
                     d_in=d_model, n_latents=n, k=int(t["k"]) if "k" in t else cfg.get("k", 32),
                     skip="W_skip" in t, model_name=str(cfg.get("model_name", "")))
        d = SparseCoder(dc, device=device)
        values = {"W_enc": t["W_enc"], "b_enc": t.get("b_enc"), "W_dec": t.get("W_dec"), "b_dec": t.get("b_dec")}
        if d.W_skip is not None:
            values["W_skip"] = t["W_skip"]
        if arch == "jumprelu":
            values["log_threshold"] = t["activation_function.threshold"].clamp_min(0).log()
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise _bad(folder, f"{f.name} lacks {', '.join(missing)}")
        _fill(folder, d, values, f"{f.name}: d_model {d_model}, {n} features")
        out.append(d.eval())
    return out
