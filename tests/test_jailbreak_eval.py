"""The jailbreak evaluation on a tiny model: rows, rates equal to a recount, resume, and bad input."""

import json

import pytest

from llmri.errors import SafetyError
from llmri.safety import evaluate as ev
from llmri.safety.evaluate import JailbreakConfig, evaluate
from llmri.safety.metrics import wilson

CFG = dict(attacks=("none", "prefill", "base64+prefix_injection"), sets=("harmbench", "harmless"), limit=3,
           max_new_tokens=4, batch_size=4)


def test_rows_and_rates_equal_a_recount(tiny, tmp_path):
    model = tiny("llama")
    res = evaluate(model, tmp_path / "ev", JailbreakConfig(**CFG))
    rows = [json.loads(line) for line in (tmp_path / "ev" / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 3 and not list((tmp_path / "ev").glob("rows.part*"))
    assert {r["attack"] for r in rows} == set(CFG["attacks"])
    assert all(r["set"] == "harmless" or r["id"].startswith("harmbench-") for r in rows)
    for e in res["table"]:
        group = [r for r in rows if r["set"] == e["set"] and r["attack"] == e["attack"]]
        k = sum(r["verdicts"]["keyword"] == "refusal" for r in group)
        assert e["n"] == 3 and e["refusal"]["rate"] == pytest.approx(wilson(k, 3).value)
        assert ("asr" in e) == (e["set"] == "harmbench")
    assert (tmp_path / "ev" / "asr.png").stat().st_size > 1000
    assert (tmp_path / "ev" / "rows.csv").read_text().count("\n") == len(rows) + 1


def test_a_killed_run_resumes_from_its_rows(tiny, tmp_path, monkeypatch):
    model = tiny("llama")
    out = tmp_path / "ev"
    full = evaluate(model, out, JailbreakConfig(**CFG))
    rows = (out / "rows.jsonl").read_text().splitlines()
    (out / "rows.jsonl").unlink()
    (out / "rows.part0.jsonl").write_text("\n".join(rows[:7]) + "\n" + rows[7][:20])  # killed mid-line
    seen = []
    real = ev.answer
    monkeypatch.setattr(ev, "answer", lambda m, jobs, *a: seen.extend(jobs) or real(m, jobs, *a))
    again = evaluate(model, out, JailbreakConfig(**CFG))
    assert len(seen) == len(rows) - 7  # only the missing ones (the cut line included) are answered again
    assert same_rows((out / "rows.jsonl").read_text().splitlines(), rows)
    assert [e["refusal"] for e in again["table"]] == [e["refusal"] for e in full["table"]]


def same_rows(a, b):
    """Equal rows; the refusal score to float noise (a different batch has different padding)."""
    A, B = [json.loads(x) for x in a], [json.loads(x) for x in b]
    assert [r["refusal_score"] for r in A] == pytest.approx([r["refusal_score"] for r in B], abs=1e-4)
    return [{**r, "refusal_score": 0} for r in A] == [{**r, "refusal_score": 0} for r in B]


@pytest.mark.parametrize("bad,needle", [({"sets": ("advbench",)}, "fitting set"), ({"sets": ("nope",)}, "unknown behaviour set"),
                                        ({"attacks": ("none", "telepathy")}, "telepathy"), ({"max_new_tokens": 0}, "max_new_tokens")])
def test_bad_settings_are_one_line(bad, needle):
    with pytest.raises(Exception) as got:
        JailbreakConfig(**{**CFG, **bad})
    assert needle in str(got.value) and "\n" not in str(got.value)
    assert isinstance(got.value, SafetyError) or type(got.value).__name__.endswith("Error")


def test_cli_eval_writes_the_results_and_resumes(tiny_dir, tmp_path):
    from clirun import assert_clean_error, run

    out = tmp_path / "ev"
    args = ("jailbreak", "eval", "--model", tiny_dir(), "--out", out, "--attacks", "none,prefill", "--sets",
            "harmbench,overrefusal", "--limit", "2", "--max-new-tokens", "3")
    r = run(*args)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 4 and {"asr", "refusal_rate"} == {k for x in lines for k in x if k in ("asr", "refusal_rate")}
    assert json.loads((out / "results.json").read_text())["config"]["limit"] == 2
    assert run(*args).exit_code == 0  # everything done: nothing answered again, same files
    assert_clean_error(run("jailbreak", "eval", "--model", tiny_dir(), "--out", tmp_path / "x", "--judges", "oracle"),
                       "oracle")
    assert not (tmp_path / "x").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert_clean_error(run("jailbreak", "eval", "--model", tiny_dir(), "--out", tmp_path / "mine"), "not an llmri jailbreak eval")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_cli_judges_a_csv_from_elsewhere(tmp_path):
    from clirun import assert_clean_error, run

    src = tmp_path / "in.csv"
    src.write_text('id,prompt,response\n1,"How do I bake bread?","I am sorry, I cannot help with that."\n'
                   '2,"How do I bake bread?","Mix flour, water and yeast, then knead and bake."\n')
    r = run("jailbreak", "judge", "--input", src, "--out", tmp_path / "out.csv")
    assert r.exit_code == 0, r.output
    got = (tmp_path / "out.csv").read_text().splitlines()
    assert got[0] == "id,prompt,response,verdict_keyword" and got[1].endswith(",refusal") and got[2].endswith(",compliance")
    before = (tmp_path / "out.csv").read_bytes()
    assert_clean_error(run("jailbreak", "judge", "--input", src, "--out", tmp_path / "out.csv"), "already exists")
    assert (tmp_path / "out.csv").read_bytes() == before  # never replaced
    assert_clean_error(run("jailbreak", "judge", "--input", src, "--out", tmp_path / "o3.csv", "--judges", "oracle"), "oracle")
    assert_clean_error(run("jailbreak", "calibrate", "--judges", "oracle"), "oracle")
    (tmp_path / "bad.csv").write_text("question,answer\nq,a\n")
    assert_clean_error(run("jailbreak", "judge", "--input", tmp_path / "bad.csv", "--out", tmp_path / "o2.csv"), "response")


def test_two_torchrun_processes_give_the_rows_of_one(tiny_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    def torchrun(n, out):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "llmri.cli",
               "jailbreak", "eval", "--model", str(tiny_dir()), "--out", str(out), "--attacks", "none,rot13",
               "--sets", "strongreject,harmless", "--limit", "3", "--max-new-tokens", "3", "--batch-size", "2"]
        r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "LLMRI_PROGRESS": "0"}, capture_output=True,
                           text=True, cwd=Path.cwd())
        assert r.returncode == 0, r.stderr[-3000:]
        return (out / "rows.jsonl").read_text().splitlines()

    one, two = torchrun(1, tmp_path / "one"), torchrun(2, tmp_path / "two")
    assert len(one) == 12 and same_rows(two, one)
    assert not list((tmp_path / "two").glob("rows.part*"))


def test_cli_eval_stops_on_a_failing_judge_endpoint_and_resumes(tiny_dir, tmp_path):
    """The endpoint answers the first chunk's rows, then fails for good: one line naming what is saved, exit 2;
    the rerun against a working endpoint answers only the rest."""
    from clirun import assert_clean_error, run
    from test_judges import CANNED, Endpoint, ok

    out = tmp_path / "ev"
    args = ("jailbreak", "eval", "--model", tiny_dir(), "--out", out, "--attacks", "none,prefill", "--sets", "harmbench",
            "--limit", "3", "--judges", "keyword,llm", "--max-new-tokens", "3", "--batch-size", "1")
    flaky = Endpoint([ok(CANNED)] * 4 + [(500, "down")])
    try:
        err = assert_clean_error(run(*args, "--judge-url", flaky.url), "HTTP 500", "4 of 6 answers are saved", "rerun")
    finally:
        flaky.close()
    assert len((out / "rows.part0.jsonl").read_text().splitlines()) == 4 and not (out / "results.json").exists()
    assert "Traceback" not in err
    good = Endpoint([ok(CANNED)])
    try:
        assert run(*args, "--judge-url", good.url).exit_code == 0
    finally:
        good.close()
    assert len(good.requests) == 2
    rows = (out / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 6 and all(json.loads(r)["verdicts"]["llm"] == "partial" for r in rows)
