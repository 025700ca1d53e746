"""Running the CLI in tests, and the one check every user error must pass."""

from typer.testing import CliRunner

from llmri.cli import app

runner = CliRunner()


def run(*args):
    """``llmri ARGS`` in-process; the result has ``exit_code``, ``stdout``, ``stderr``, ``output``."""
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(result, *needles, code: int = 2) -> str:
    """Exit ``code``, stderr one ``error:`` line holding every needle, no traceback; returns that line."""
    assert result.exit_code == code, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in err, err
    return err
