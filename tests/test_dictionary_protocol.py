"""The dictionary protocol (llmri/dictionaries/protocol.py), checked through its methods only: the same code
runs on an SAE, a transcoder, a crosscoder and a CLT, with random weights and non-trivial scales."""

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llmri.dictionaries import DictConfig, build
from llmri.features.stats import FeatureStats

D, N, T = 8, 6, 5
POINTS = {
    "sae": (["resid_post.1"], ["resid_post.1"]),
    "transcoder": (["mlp_in.1"], ["mlp_out.1"]),
    "crosscoder": (["resid_post.0", "resid_post.2"], ["resid_post.0", "resid_post.2"]),
    "clt": ([f"mlp_in.{l}" for l in range(3)], [f"mlp_out.{l}" for l in range(3)]),
}


def tiny(kind: str, arch: str, seed: int = 0):
    ins, outs = POINTS[kind]
    d = build(DictConfig(kind=kind, arch=arch, in_points=ins, out_points=outs, d_in=D, d_out=D, n_latents=N, k=3,
                         skip=kind == "transcoder"), seed=seed).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in d.named_parameters():
            p.copy_(torch.full(p.shape, math.log(0.05)) if name == "log_threshold" else torch.randn(p.shape, generator=g, dtype=p.dtype))
        d.in_scale.copy_(torch.rand(d.in_scale.shape, generator=g, dtype=torch.float64) * 1.5 + 0.5)
        d.out_scale.copy_(torch.rand(d.out_scale.shape, generator=g, dtype=torch.float64) * 1.5 + 0.5)
    return d


def block_inputs(d, raw):
    """Per block, its scaled input from raw activations, through the protocol."""
    return [torch.cat([raw[p] for p in d.block_inputs(b)], -1) * d.input_scale(b) for b in range(d.n_blocks)]


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
@pytest.mark.parametrize("kind", list(POINTS))
def test_every_kind_through_the_protocol(kind, arch):
    d = tiny(kind, arch)
    g = torch.Generator().manual_seed(1)
    raw = {p: torch.randn(T, D, generator=g, dtype=torch.float64) for p in d.cfg.in_points}
    x = d.inputs(raw)
    recon = d.reconstruct(raw)
    with torch.no_grad():
        # decode_all(encode(x)) is the forward reconstruction, and so is decoding the per-block encodings
        for acts in (d.encode(x), [d.encode_layer(xb, b) for b, xb in enumerate(block_inputs(d, raw))]):
            got = d.split_outputs(d.decode_all(acts, x))
            assert list(got) == list(d.cfg.out_points)
            for p in got:
                torch.testing.assert_close(got[p], recon[p])
        # feature_decoder(i): the change of the raw reconstruction when feature i rises by 1
        dense = [d.encode_layer(xb, b).dense() for b, xb in enumerate(block_inputs(d, raw))]
        base = d.split_outputs(d.decode_all(dense, x))
        features = sorted({0, N - 1, d.n_latents - 1, d.n_latents - N + 1})  # a CLT's: layers 0 and 2
        assert d.n_latents == N * d.n_blocks and len(d.source_layers) == d.n_blocks
        for i in features:
            b, j = divmod(i, N)
            bumped = [a.clone() for a in dense]
            bumped[b][:, j] += 1.0
            moved = d.split_outputs(d.decode_all(bumped, x))
            dec = d.feature_decoder(i)
            assert set(dec) <= set(d.cfg.out_points) and d.feature_point(i) in dec
            for p in d.cfg.out_points:
                change = moved[p] - base[p]
                torch.testing.assert_close(change, dec.get(p, torch.zeros(D, dtype=torch.float64)).expand_as(change))
            assert d.feature_name(i) == FeatureStats.name(SimpleNamespace(meta=d.describe()), i)
            assert d.feature_layer(i) == int(d.feature_point(i).split(".")[1])
        if d.n_blocks > 1:
            assert d.feature_name(d.n_latents - 1) == f"L2/{N - 1}" and d.feature_layer(d.n_latents - 1) == 2
    dirs = d.decoder_directions()
    assert dirs.shape == (d.n_latents, D)
    assert [w.shape for _, w in d.raw_decoders()] == [(N, len(d.block_outputs(b)), D) for b in range(d.n_blocks)]


def test_no_caller_branches_on_the_dictionary_class():
    root = Path(__file__).resolve().parent.parent / "llmri"
    hits = [f"{f.relative_to(root)}:{n}" for f in sorted(root.rglob("*.py"))
            for n, line in enumerate(f.read_text().splitlines(), 1)
            if re.search(r"isinstance\(.*CrossLayerTranscoder", line) and f.name != "formats.py"]
    assert hits == []
