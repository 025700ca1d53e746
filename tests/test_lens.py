"""Lenses: the logit lens is the model's own output at the last layer; the linear lens is the ridge least-squares
solution on the kept tokens (checked against numpy), the identity at the last layer, and predicts the last
layer's state better than the logit lens on windows it was not fitted on (tiny models)."""

import numpy as np
import pytest
import torch

from llmri import data
from llmri.errors import CorpusError
from llmri.lens import Lens, as_lens, fit_linear_lens


def _windows(model, corpus, split):
    docs = data.load_corpus(str(corpus))
    return list(data.batched(data.token_windows(model, docs, data.WindowSpec(context=32, split=split)), 4))


def test_logit_lens_at_the_last_layer_is_the_models_output(tiny):
    model = tiny("llama")
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    last = model.n_layers - 1
    h = model.capture(ids, [f"resid_post.{last}"])[f"resid_post.{last}"]
    lens = as_lens([0, last])
    assert isinstance(lens, Lens) and list(lens) == [0, last] and len(lens) == 2 and as_lens(lens) is lens
    torch.testing.assert_close(lens.logits(model, 1, h), model.hf(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_linear_lens_is_the_ridge_solution_and_beats_the_logit_lens(tiny, text_corpus):
    model = tiny("llama")
    last = model.n_layers - 1
    train = _windows(model, text_corpus, "train")
    lens = fit_linear_lens(model, [0, last], iter(train), tokens=10**9, ridge=1e-3)
    x, y = [], []
    for ids in train:  # the same kept tokens, by hand: position 0 and special tokens out, norm outliers out
        acts = model.capture(ids, ["resid_post.0", f"resid_post.{last}"])
        keep = data.kept_mask(ids, list(acts.values()), model.special_ids, data.Exclusion())
        x.append(acts["resid_post.0"][keep].double())
        y.append(acts[f"resid_post.{last}"][keep].double())
    x, y = torch.cat(x).numpy(), torch.cat(y).numpy()
    assert lens.tokens == len(x) > 100
    X = np.c_[x, np.ones(len(x))]
    g = X.T @ X
    ref = np.linalg.solve(g + 1e-3 * np.diag(g)[:-1].mean() * np.eye(len(g)), X.T @ y)
    np.testing.assert_allclose(lens.weight[0].numpy(), ref, rtol=1e-3, atol=1e-4)
    d = model.d_model  # at the last layer the map is (almost) the identity
    np.testing.assert_allclose(lens.weight[1][:d].numpy(), np.eye(d), atol=0.02)

    held = _windows(model, text_corpus, "eval")
    err_lin, err_logit = 0.0, 0.0
    for ids in held:
        acts = model.capture(ids, ["resid_post.0", f"resid_post.{last}"])
        h0, target = acts["resid_post.0"][:, 1:], acts[f"resid_post.{last}"][:, 1:]
        err_lin += float((lens.map(0, h0) - target).pow(2).sum())
        err_logit += float((h0 - target).pow(2).sum())
    assert err_lin < 0.5 * err_logit  # held-out windows: the fitted map reads the last layer better


def test_linear_lens_without_tokens_is_one_clear_error(tiny):
    with pytest.raises(CorpusError, match="no token"):
        fit_linear_lens(tiny("llama"), [0], iter([]))
