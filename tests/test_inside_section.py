"""The report section "reading refusal from the inside": it shows what the refusal-direction, probe, diff and
explain folders hold (read, not recomputed) and refuses other folders in one line before any work."""

import json
from pathlib import Path

import pytest
import torch

from llmri.errors import SafetyError
from llmri.safety import detect as D
from llmri.safety import diff as X
from llmri.safety import explain as E
from llmri.safety import refusal as R
from llmri.safety.scan_section import INSIDE, SafetySectionConfig, inside_section
from llmri.scan import ScanConfig
from llmri.stages import Inputs


@pytest.fixture(scope="module")
def readings(tiny_dir, tmp_path_factory):
    import llmri

    root = tmp_path_factory.mktemp("readings")
    model = llmri.load_model(str(tiny_dir("llama")))
    try:
        R.extract(model, root / "refdir", R.RefusalConfig(n_train=4, n_val=2, positions=1, kl_max=1e9, min_steering=-1e9))
    except SafetyError:  # a random model may have no admissible candidate: the scores are written all the same
        pass
    D.detect(model, root / "probe", D.ProbeConfig(n_train=6, limit=3, attacks=(), judge=False, n_boot=20, folds=2))
    other = llmri.load_model(str(tiny_dir("llama")))
    with torch.no_grad():
        for p in other.hf.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    X.diff(model, other, root / "diff", X.DiffConfig(corpus_tokens=1024, chat_prompts=4, n_latents=32, k=4,
                                                      train_tokens=8192, batch_size=256, limit=3, examples=2))
    E.explain(model, root / "explain", E.ExplainConfig(attacks=("prefix_injection",), n_train=4, candidates=3,
                                                       max_new_tokens=3, trace=False))
    return model, [str(root / n) for n in ("refdir", "probe", "diff", "explain")]


def test_the_section_shows_every_reading(readings, tmp_path):
    model, folders = readings
    cfg = ScanConfig(model="unused", safety=SafetySectionConfig(readings=tuple(folders)))
    assert INSIDE.needs(cfg, model) is None
    sec = inside_section(Inputs(model, [], cfg, tmp_path, None, {}))
    for title in ("refusal direction: refdir", "detectors: probe", "model diff: diff", "explained jailbreaks: explain"):
        assert f"<h3>{title}</h3>" in sec.html, title
    table = json.loads(open(folders[1] + "/detect.json").read())["table"]
    assert sec.data[folders[1]]["table"] == table
    cases = json.loads(open(folders[3] + "/explain.json").read())["cases"]
    assert sec.html.count('<img class="fig"') == 3 + bool(cases)  # each folder's figure; explain's when it has a case
    assert "refusal supernode" in sec.html and str(Path(folders[3]) / "index.html") in sec.html
    counts = json.loads(open(folders[2] + "/diff.json").read())["counts"]
    assert sec.data[folders[2]]["counts"] == counts
    assert inside_section(Inputs(model, [], ScanConfig(model="unused"), tmp_path, None, {})) is None


def test_a_foreign_folder_is_refused_in_one_line_before_any_pass(tiny_dir, tmp_path):
    from clirun import assert_clean_error, run

    (tmp_path / "junk").mkdir()
    with pytest.raises(SafetyError, match="holds none of"):
        SafetySectionConfig(readings=(str(tmp_path / "junk"),))
    res = run("scan", "-m", str(tiny_dir("llama")), "--out", str(tmp_path / "rep"), "--safety-readings", str(tmp_path / "junk"))
    assert_clean_error(res, "holds none of")
    assert not (tmp_path / "rep").exists()
