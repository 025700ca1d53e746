"""The MRI report on a tiny model: offline, escaped, and its numbers equal a direct computation."""

import json
import re

import numpy as np
import scipy.stats
import torch

from llmri import data
from llmri.scan import ScanConfig, scan
from llmri.stats import RunningStats

HOSTILE = "<img src=x onerror=alert(1)>"


def test_report_is_offline_escaped_and_correct(tiny, text_corpus, tmp_path):
    model = tiny("llama")
    (text_corpus / f"{HOSTILE}.txt").write_text("the war of the nation " * 40)
    cfg = ScanConfig(model="unused", corpus=str(text_corpus), out=str(tmp_path / "rep"), passages=3,
                     passage_tokens=12, chat_prompt="<script>alert('x')</script> peace?", stats_tokens=256,
                     context=32, batch_size=4, exclusion=data.Exclusion(outlier_factor=None))
    index = scan(cfg, model=model)
    html = index.read_text()
    # self-contained and offline: no scripts at all, nothing fetched from anywhere
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "url(http" not in html and "@import" not in html
    # hostile corpus/prompt text is shown escaped
    assert "&lt;script&gt;" in html
    assert HOSTILE not in html
    for sid in ("card", "layers", "depth"):
        assert f'id="{sid}"' in html

    summary = json.loads((tmp_path / "rep" / "scan.json").read_text())
    got = summary["sections"]["depth"]["resid_post.1"]
    # reference: the same windows, computed directly
    wins = data.token_windows(model, data.load_corpus(str(text_corpus)), data.WindowSpec(context=32, split="eval"))
    ids = torch.stack([w for _, w in zip(range(256 // 32), wins)])
    x = model.capture(ids, ["resid_post.1"])["resid_post.1"]
    keep = data.token_mask(ids, model.special_ids, cfg.exclusion)
    kept = x[keep].double()
    assert got["n_tokens"] == len(kept) and got["n_excluded"] == int((~keep).sum())
    np.testing.assert_allclose(got["mean_norm"], kept.norm(dim=-1).mean().item(), rtol=1e-5)
    np.testing.assert_allclose(got["kurtosis"], scipy.stats.kurtosis(kept.numpy(), axis=1).mean(), rtol=1e-4)
    assert summary["sections"]["card"]["n_layers"] == 3
    assert "position 0" in summary["sections"]["depth"]["exclusion"]


def test_running_stats_top_dims_find_a_planted_outlier_dimension():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 32, generator=g)
    x[:, 7] *= 40
    acc = RunningStats(32)
    acc.update(x[:250], torch.ones(250, dtype=torch.bool))
    acc.update(x[250:], torch.ones(250, dtype=torch.bool))
    r = acc.result()
    assert r.top_dims[0][0] == 7 and r.top_dims[0][1] > 20
    assert r.kurtosis > 10  # one coordinate dominates every token
    np.testing.assert_allclose(r.mean_norm, x.norm(dim=-1).mean().item(), rtol=1e-5)
