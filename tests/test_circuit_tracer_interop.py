"""circuit-tracer, given llmri's exported transcoders and the same model, builds the same graph.

circuit-tracer pins transformers ≤ 4.57, so it usually lives in its own environment: point
``LLMRI_CIRCUIT_TRACER_PYTHON`` at that interpreter (e.g. a venv with ``pip install circuit-tracer``);
the test is skipped when neither it nor the current interpreter can import ``circuit_tracer``."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmri.circuits import AttributionConfig, attribute
from llmri.circuits.transcoders import Transcoders
from llmri.data import Exclusion
from llmri.dictionaries import export_circuit_tracer
from test_circuits import PROMPT, random_tcs, scaled_model


def _python() -> str | None:
    given = os.environ.get("LLMRI_CIRCUIT_TRACER_PYTHON")
    if given:
        return given
    return sys.executable if importlib.util.find_spec("circuit_tracer") else None


@pytest.mark.skipif(_python() is None, reason="circuit-tracer not installed (set LLMRI_CIRCUIT_TRACER_PYTHON)")
def test_circuit_tracer_builds_the_same_graph(tiny_dir, tmp_path):
    model = scaled_model(tiny_dir("llama"))
    model.hf.save_pretrained(tmp_path / "model")
    model.tokenizer.save_pretrained(tmp_path / "model")
    tcs = random_tcs(model, arch="jumprelu", skip=True)
    export_circuit_tracer(tcs.dicts, tmp_path / "tcs", model_name="tiny")  # folds the scales: same function
    tcs = Transcoders(tcs.dicts, model.n_layers)
    ids = model.tokenize([PROMPT]).input_ids[0]
    ref = tmp_path / "ref.safetensors"
    subprocess.run([_python(), str(Path(__file__).parent / "circuit_tracer_reference.py"), str(tmp_path / "model"),
                    str(tmp_path / "tcs"), ",".join(map(str, ids.tolist())), str(ref)], check=True, timeout=600)
    theirs = load_file(str(ref))
    # circuit-tracer has features at every position but 0 (and zeroes the position-0 error node)
    ours = attribute(model, tcs, ids, AttributionConfig(max_feature_nodes=None, exclusion=Exclusion(True, False, None)))
    assert torch.equal(theirs["logit_tokens"], ours.logit_tokens)
    torch.testing.assert_close(theirs["logit_probs"], ours.logit_probs, rtol=1e-4, atol=1e-6)
    t_feats = {tuple(f): i for i, f in enumerate(theirs["features"].tolist())}
    o_feats = {tuple(f): i for i, f in enumerate(ours.features.tolist())}
    assert t_feats.keys() == o_feats.keys() and len(t_feats) > 50
    L, P = model.n_layers, ours.n_pos
    common = [(o_feats[f], t_feats[f]) for f in o_feats]
    nf_o, nf_t = ours.n_features, len(t_feats)
    for l in range(L):  # error nodes at positions ≥ 1, then tokens, then logits: same layout after the features
        for p in range(1, P):
            common.append((nf_o + l * P + p, nf_t + l * P + p))
    common += [(nf_o + L * P + p, nf_t + L * P + p) for p in range(P)]
    common += [(nf_o + (L + 1) * P + j, nf_t + (L + 1) * P + j) for j in range(ours.n_logits)]
    o_idx = torch.tensor([c[0] for c in common])
    t_idx = torch.tensor([c[1] for c in common])
    a_ours = ours.adjacency[o_idx][:, o_idx]
    a_theirs = theirs["adjacency"][t_idx][:, t_idx]
    scale = float(a_theirs.abs().max())
    print(f"compared {int((a_theirs != 0).sum())} edges among {len(common)} nodes: max |Δ| {float((a_ours - a_theirs).abs().max()):.3g} "
          f"(largest edge {scale:.3g})")
    torch.testing.assert_close(a_ours, a_theirs, rtol=1e-3, atol=1e-4 * scale)
    assert int((a_ours != 0).sum()) > 500
