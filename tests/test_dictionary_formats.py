"""Dictionary files: llmri/SAELens round trips, circuit-tracer export, and our readers of SAELens and sparsify
folders tested on files written independently from those formats' documented schemas and equations."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from llmri.dictionaries import DictConfig, build, export_circuit_tracer, load, save
from llmri.dictionaries.formats import load_circuit_tracer

D = 32


def _randomise(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in d.named_parameters():
            if name == "log_threshold":
                p.copy_(torch.rand(p.shape, generator=g).log() - 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if hasattr(d, "threshold"):
            d.threshold.fill_(0.2)
        d.in_scale.uniform_(0.5, 2.0, generator=g)
        if d.cfg.apply_b_dec_to_input:
            d.out_scale.copy_(d.in_scale)
        else:
            d.out_scale.uniform_(0.5, 2.0, generator=g)
    return d.eval()


def _acts(points, n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {p: 3 * torch.randn(n, D, generator=g) for p in points}


CASES = [
    ("sae", "topk", False), ("sae", "batchtopk", False), ("sae", "jumprelu", False), ("sae", "relu", False),
    ("transcoder", "topk", True), ("transcoder", "jumprelu", False), ("transcoder", "relu", True),
    ("transcoder", "batchtopk", False), ("crosscoder", "topk", False), ("crosscoder", "jumprelu", False),
    ("clt", "topk", False), ("clt", "jumprelu", False), ("clt", "relu", False),
]


def _cfg(kind, arch, skip):
    ins, outs = {
        "sae": (["resid_post.3"], None), "transcoder": (["mlp_in.2"], ["mlp_out.2"]),
        "crosscoder": (["resid_post.1", "resid_post.2"], None),
        "clt": ([f"mlp_in.{l}" for l in range(3)], [f"mlp_out.{l}" for l in range(3)]),
    }[kind]
    return DictConfig(kind=kind, arch=arch, in_points=ins, out_points=outs or ins, d_in=D, n_latents=48, k=6, skip=skip)


@pytest.mark.parametrize("kind,arch,skip", CASES)
def test_save_load_round_trip_gives_identical_outputs(kind, arch, skip, tmp_path):
    d = _randomise(build(_cfg(kind, arch, skip)))
    acts = _acts(d.cfg.in_points)
    before = d.reconstruct(acts)
    folder = save(d, tmp_path / "dict", density=torch.rand(d.n_latents))
    loaded = load(folder)
    after = loaded.reconstruct(acts)
    for p in before:
        torch.testing.assert_close(after[p], before[p], rtol=1e-5, atol=1e-5)
    assert loaded.cfg.kind == kind and loaded.cfg.in_points == d.cfg.in_points
    if kind in ("sae", "transcoder"):
        cfg = json.loads((folder / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"].startswith("blocks.") and cfg["normalize_activations"] == "none"
        expected = {"topk": "topk", "relu": "standard"}.get(arch, "jumprelu") if kind == "sae" else None
        if expected:
            assert cfg["architecture"] == expected  # BatchTopK is saved as JumpReLU with its threshold
        assert (folder / "sparsity.safetensors").exists()


def test_circuit_tracer_export_round_trips(tmp_path):
    tcs = [_randomise(build(DictConfig(kind="transcoder", arch="topk", in_points=[f"mlp_in.{l}"],
                                       out_points=[f"mlp_out.{l}"], d_in=D, n_latents=40, k=5)), seed=l)
           for l in range(3)]
    acts = _acts([f"mlp_in.{l}" for l in range(3)])
    before = [t.reconstruct({f"mlp_in.{l}": acts[f"mlp_in.{l}"]}) for l, t in enumerate(tcs)]
    folder = export_circuit_tracer(tcs, tmp_path / "plt", model_name="tiny")
    text = (folder / "config.yaml").read_text()
    assert "model_kind: transcoder_set" in text and "feature_input_hook: mlp.hook_in" in text and "feature_output_hook: mlp.hook_out" in text
    loaded = load_circuit_tracer(folder)
    for l, t in enumerate(loaded):
        after = t.reconstruct({f"mlp_in.{l}": acts[f"mlp_in.{l}"]})
        torch.testing.assert_close(after[f"mlp_out.{l}"], before[l][f"mlp_out.{l}"], rtol=1e-5, atol=1e-5)
    clt = _randomise(build(_cfg("clt", "jumprelu", False)))
    before = clt.reconstruct(_acts(clt.cfg.in_points))
    folder = export_circuit_tracer(clt, tmp_path / "clt")
    from safetensors import safe_open

    with safe_open(str(folder / "W_dec_1.safetensors"), "pt") as f:
        assert list(f.get_slice("W_dec_1").get_shape()) == [48, 2, D]  # [d_tc, L − i, d_model]
    after = load(folder).reconstruct(_acts(clt.cfg.in_points))
    for p in before:
        torch.testing.assert_close(after[p], before[p], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- foreign files, independently written


def _write_saelens(folder, arch, *, d_in=D, d_sae=40, d_out=None, k=None, rescale=False, seed=0):
    """A SAELens v6 folder written from the documented schema (W_enc [d_in, d_sae], W_dec [d_sae, d_out],
    threshold for JumpReLU, W_skip [d_out, d_in])."""
    g = torch.Generator().manual_seed(seed)
    d_out = d_out or d_in
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3, "b_enc": torch.randn(d_sae, generator=g) * 0.1,
         "W_dec": torch.randn(d_sae, d_out, generator=g) * 0.3, "b_dec": torch.randn(d_out, generator=g) * 0.1}
    if "jumprelu" in arch:
        w["threshold"] = torch.rand(d_sae, generator=g) * 0.5
    if "skip" in arch:
        w["W_skip"] = torch.randn(d_out, d_in, generator=g) * 0.1
    transcoder = "transcoder" in arch
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": not transcoder,
           "normalize_activations": "none", "reshape_activations": "none", "architecture": arch,
           "metadata": {"sae_lens_version": "6.5.0", "model_name": "gpt2", "hook_name": "blocks.4.hook_resid_pre"
                        if not transcoder else "blocks.4.ln2.hook_normalized", "hook_head_index": None}}
    if transcoder:
        cfg["d_out"] = d_out
        cfg["metadata"]["hook_name_out"] = "blocks.4.hook_mlp_out"
    if k:
        cfg["k"] = k
        cfg["rescale_acts_by_decoder_norm"] = rescale
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(w, str(folder / "sae_weights.safetensors"))
    return w, cfg


def _saelens_reference(w, cfg, x):
    """SAELens' documented forward."""
    arch = cfg["architecture"]
    sae_in = x - w["b_dec"] if cfg["apply_b_dec_to_input"] else x
    h = sae_in @ w["W_enc"] + w["b_enc"]
    W_dec = w["W_dec"]
    if arch == "topk":
        norms = W_dec.norm(dim=1)
        if cfg.get("rescale_acts_by_decoder_norm"):
            h = h * norms
        vals, idx = h.topk(cfg["k"], dim=-1)
        f = torch.zeros_like(h).scatter(-1, idx, vals.relu())
        if cfg.get("rescale_acts_by_decoder_norm"):
            f = f / norms
    elif "jumprelu" in arch:
        f = h.relu() * (h > w["threshold"])
    else:
        f = h.relu()
    out = f @ W_dec + w["b_dec"]
    if "W_skip" in w:
        out = out + x @ w["W_skip"].T
    return out


@pytest.mark.parametrize("arch,k,rescale", [("standard", None, False), ("topk", 5, False), ("topk", 5, True),
                                            ("jumprelu", None, False), ("transcoder", None, False),
                                            ("skip_transcoder", None, False), ("jumprelu_skip_transcoder", None, False)])
def test_saelens_reader_on_independently_written_files(arch, k, rescale, tmp_path):
    w, cfg = _write_saelens(tmp_path / "sae", arch, k=k, rescale=rescale)
    d = load(tmp_path / "sae")
    x = 3 * torch.randn(50, D)
    point = d.cfg.in_points[0]
    assert point == ("mlp_in.4" if "transcoder" in arch else "resid_pre.4")
    got = d.reconstruct({point: x})[d.cfg.out_points[0]]
    torch.testing.assert_close(got, _saelens_reference(w, cfg, x), rtol=1e-4, atol=1e-4)


def test_saelens_reader_refuses_per_token_normalisation(tmp_path):
    from llmri.dictionaries import DictionaryError

    _write_saelens(tmp_path / "sae", "standard")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    cfg["normalize_activations"] = "layer_norm"
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(DictionaryError, match="layer_norm"):
        load(tmp_path / "sae")


@pytest.mark.parametrize("transcode,skip", [(False, False), (True, True)])
def test_sparsify_reader_on_independently_written_files(transcode, skip, tmp_path):
    """sparsify: encoder.weight [n, d_in], W_dec [n, d_in]; pre = ReLU((x − b_dec)·Wᵀ + b) (no b_dec
    subtraction when transcoding), top-k, out = Σ vals·W_dec[idx] + b_dec (+ x·W_skipᵀ)."""
    g = torch.Generator().manual_seed(3)
    n, k = 64, 6
    w = {"encoder.weight": torch.randn(n, D, generator=g) * 0.3, "encoder.bias": torch.randn(n, generator=g) * 0.1,
         "W_dec": torch.randn(n, D, generator=g) * 0.3, "b_dec": torch.randn(D, generator=g) * 0.1}
    if skip:
        w["W_skip"] = torch.randn(D, D, generator=g) * 0.1
    folder = tmp_path / "run" / ("layers.6.mlp" if transcode else "layers.6")
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 2, "normalize_decoder": True,
                                                 "num_latents": n, "k": k, "multi_topk": False, "skip_connection": skip,
                                                 "transcode": transcode, "d_in": D}))
    save_file(w, str(folder / "sae.safetensors"))
    d = load(folder)
    x = 3 * torch.randn(40, D)
    pre = F.relu((x if transcode else x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
    vals, idx = pre.topk(k, dim=-1)
    ref = (vals[..., None] * w["W_dec"][idx]).sum(1) + w["b_dec"]
    if skip:
        ref = ref + x @ w["W_skip"].T
    assert d.cfg.in_points == (["mlp_in.6"] if transcode else ["resid_post.6"])
    got = d.reconstruct({d.cfg.in_points[0]: x})[d.cfg.out_points[0]]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_cli_exports_a_run_folder_of_transcoders(tmp_path):
    from typer.testing import CliRunner

    from llmri.cli import app

    tcs = [_randomise(build(DictConfig(kind="transcoder", arch="topk", in_points=[f"mlp_in.{l}"],
                                       out_points=[f"mlp_out.{l}"], d_in=D, n_latents=40, k=5)), seed=l)
           for l in range(3)]
    run = tmp_path / "run"
    for t in reversed(tcs):  # folder order must not matter
        save(t, run / t.cfg.name)
    acts = _acts([f"mlp_in.{l}" for l in range(3)])
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "ct")])
    assert r.exit_code == 0, r.output
    for l, t in enumerate(load_circuit_tracer(tmp_path / "ct")):
        torch.testing.assert_close(t.reconstruct({f"mlp_in.{l}": acts[f"mlp_in.{l}"]})[f"mlp_out.{l}"],
                                   tcs[l].reconstruct({f"mlp_in.{l}": acts[f"mlp_in.{l}"]})[f"mlp_out.{l}"],
                                   rtol=1e-5, atol=1e-5)
    sae = build(DictConfig(kind="sae", arch="topk", in_points=["resid_post.0"], d_in=D, n_latents=40, k=5))
    save(sae, tmp_path / "sae")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "sae"), "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "needs transcoders or a CLT" in r.output and not (tmp_path / "bad").exists()
