import itertools
import json

import pytest
import torch

from llmri import data
from llmri.data import Document, Exclusion, WindowSpec
from llmri.errors import ContextLengthError, CorpusError


def test_local_corpora(tmp_path, text_corpus):
    docs = data.load_corpus(str(text_corpus))
    assert len(docs) == 12 and docs == sorted(docs, key=lambda d: d.id)
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"x{i}", "text": f"the war {i}", "year": 1900 + i}) for i in range(3)))
    docs = data.load_corpus(str(f))
    assert [d.id for d in docs] == ["x0", "x1", "x2"] and docs[2].meta["year"] == 1902
    t = tmp_path / "one.txt"
    t.write_text("the nation")
    assert data.load_corpus(str(t))[0].text == "the nation"


@pytest.mark.parametrize("content", ["", "   \n\n"])
def test_empty_corpus_is_a_clear_error(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_text(content)
    with pytest.raises(CorpusError, match="no text"):
        data.load_corpus(str(f))


def test_missing_and_malformed_corpora(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        data.load_corpus(str(tmp_path / "nope.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n')
    with pytest.raises(CorpusError, match="text"):
        data.load_corpus(str(bad))


def test_split_is_deterministic_disjoint_and_stable():
    docs = [Document(f"d{i}", "x") for i in range(400)]
    train = data.split_documents(docs, "train")
    evals = data.split_documents(docs, "eval")
    assert {d.id for d in train} | {d.id for d in evals} == {d.id for d in docs}
    assert not {d.id for d in train} & {d.id for d in evals}
    assert 20 <= len(evals) <= 60  # ~10%
    more = docs + [Document(f"new{i}", "x") for i in range(50)]
    assert {d.id for d in data.split_documents(more, "eval")} >= {d.id for d in evals}  # adding docs moves none
    assert {d.id for d in data.split_documents(list(reversed(docs)), "eval")} == {d.id for d in evals}
    assert {d.id for d in data.split_documents(docs, "eval", seed=1)} != {d.id for d in evals}


def test_windows_are_the_bos_separated_stream(tiny, text_corpus):
    model = tiny("llama")
    docs = data.load_corpus(str(text_corpus))
    spec = WindowSpec(context=16, split="all", seed=3)
    wins = list(data.token_windows(model, docs, spec))
    assert all(w.shape == (16,) and w[0] == model.bos_id for w in wins)
    # rebuild the expected stream from the same (seeded) document order
    import random

    order = sorted(docs, key=lambda d: d.id)
    random.Random(3).shuffle(order)
    stream = []
    for d in order:
        stream += [model.bos_id, *model.tokenizer(d.text, add_special_tokens=False)["input_ids"]]
    body = torch.cat([w[1:] for w in wins]).tolist()
    assert body == stream[: len(body)]
    assert len(stream) - len(body) < 15  # only the tail shorter than a window is dropped


def test_context_longer_than_model_limit(tiny, text_corpus):
    model = tiny("llama")
    docs = data.load_corpus(str(text_corpus))
    with pytest.raises(ContextLengthError, match="128"):
        next(data.token_windows(model, docs, WindowSpec(context=4096)))


def test_token_mask_and_outliers():
    tokens = torch.tensor([[0, 5, 6, 0, 7], [0, 8, 2, 9, 9]])
    keep = data.token_mask(tokens, {0, 2}, Exclusion())
    assert keep.tolist() == [[False, True, True, False, True], [False, True, False, True, True]]
    assert data.token_mask(tokens, {0, 2}, Exclusion(first_position=False, special_tokens=False)).all()
    acts = torch.ones(2, 5, 4)
    acts[1, 3] *= 100
    out = data.outlier_mask(acts, keep, Exclusion(outlier_factor=20))
    assert out.sum() == 1 and out[1, 3]
    assert not data.outlier_mask(acts, keep, Exclusion(outlier_factor=None)).any()


def test_batched_consumes_exactly_the_limit():
    it = iter([torch.tensor([i]) for i in range(10)])
    batches = list(data.batched(it, 2, limit=5))
    assert [b.flatten().tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert next(it).item() == 5


def test_small_corpus_still_has_an_eval_document():
    docs = [Document(f"d{i}", "x") for i in range(5)]
    evals = data.split_documents(docs, "eval")
    assert len(evals) == 1 and len(data.split_documents(docs, "train")) == 4
    with pytest.raises(CorpusError, match="empty"):
        data.split_documents(docs[:1], "eval")


# ---------------------------------------------------------------- kept activations


def test_kept_activations_match_capture_and_kept_mask(tiny, text_corpus):
    model = tiny("llama")
    docs = data.load_corpus(str(text_corpus))
    spec, points = WindowSpec(context=16, split="all"), ["resid_post.0", "resid_post.1"]
    got = list(data.kept_activations(model, docs, points, windows=spec, batch_size=4, limit_windows=10))
    assert [len(kb.tokens) for kb in got] == [4, 4, 2] and [kb.first for kb in got] == [0, 4, 8]
    windows = list(itertools.islice(data.token_windows(model, docs, spec), 10))
    ref = {p: [] for p in points}
    for s in range(0, 10, 4):
        batch = torch.stack(windows[s : s + 4])
        acts = model.capture(batch, points)
        keep = data.kept_mask(batch, [acts[p] for p in points], model.special_ids, Exclusion())
        for p in points:
            ref[p].append(acts[p][keep])
    for p in points:
        assert torch.equal(torch.cat([kb.rows(p) for kb in got]), torch.cat(ref[p]))
    assert torch.equal(torch.cat([kb.tokens for kb in got]), torch.stack(windows))
    w, t = got[1].positions()
    assert torch.equal(got[1].rows(points[0]), got[1].acts[points[0]][w - 4, t])
    # ready batches are used as they come; windows from an iterator are grouped
    batches = [torch.stack(windows[s : s + 4]) for s in range(0, 10, 4)]
    again = list(data.kept_activations(model, iter(batches), points))
    assert all(torch.equal(a.keep, b.keep) for a, b in zip(again, got)) and len(again) == 3


def test_kept_activations_without_exclusion_keep_every_token(tiny, text_corpus):
    model = tiny("llama")
    docs = data.load_corpus(str(text_corpus))
    none = Exclusion(first_position=False, special_tokens=False, outlier_factor=None)
    for kb in data.kept_activations(model, docs, ["resid_post.1"], windows=WindowSpec(context=16, split="all"),
                                    batch_size=4, exclusion=none, limit_windows=8):
        assert kb.keep.all() and kb.rows("resid_post.1").shape == (kb.tokens.numel(), model.d_model)


def test_kept_activations_stop_at_the_limits(tiny, text_corpus):
    model = tiny("llama")
    docs = data.load_corpus(str(text_corpus))
    spec = WindowSpec(context=16, split="all")

    def n_tokens(**limits):
        return sum(kb.tokens.numel() for kb in data.kept_activations(model, docs, ["embed"], windows=spec,
                                                                      batch_size=4, **limits))

    assert n_tokens(limit_tokens=100) == 96  # the windows holding 100 tokens: 6 of 16
    assert n_tokens(limit_tokens=5) == 16  # at least one window
    assert n_tokens(limit_tokens=100, limit_windows=3) == 48
    assert n_tokens(limit_windows=0) == 0
    it = data.token_windows(model, docs, spec)
    assert sum(len(kb.tokens) for kb in data.kept_activations(model, it, ["embed"], batch_size=4, limit_tokens=80)) == 5
    assert torch.equal(next(it), list(itertools.islice(data.token_windows(model, docs, spec), 6))[5])  # no more taken


def test_kept_activations_outliers_per_point(tiny, text_corpus):
    model = tiny("llama")
    docs = data.load_corpus(str(text_corpus))
    a, b = "resid_post.0", "resid_post.1"
    low = Exclusion(outlier_factor=1.05)
    kb = next(data.kept_activations(model, docs, [a, b], windows=WindowSpec(context=16, split="all"), batch_size=8,
                                    exclusion=low))
    only_b = kb.kept_at([a]) & kb.outliers(b)  # kept by a's own rule, an outlier at b
    assert only_b.any()
    assert not (kb.keep & only_b).any()  # the joint rule (default: every point) drops it
    assert torch.equal(kb.keep, data.kept_mask(kb.tokens, [kb.acts[a], kb.acts[b]], model.special_ids, low))
    per_a = next(data.kept_activations(model, docs, [a, b], windows=WindowSpec(context=16, split="all"), batch_size=8,
                                       exclusion=low, outlier_points=[a]))
    assert torch.equal(per_a.keep, kb.kept_at([a])) and (per_a.keep & only_b).any()
    assert torch.equal(kb.kept_at([]), kb.base)
