"""`predict` streams: ten times the inputs must not take ten times the memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import nlptasks

pytestmark = pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads resident memory from /proc")

STREAM_GROWTH = """
import os, sys
import nlptasks
from nlptasks.predict import read_texts
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20
predictor = nlptasks.load(sys.argv[1])
loaded = peak = rss()
count = 0
with open(sys.argv[2], encoding="utf-8") as lines:
    for _ in predictor.stream(read_texts(lines, sys.argv[2])):
        count += 1
        if count % 250 == 0:
            peak = max(peak, rss())
print(count, peak - loaded)
"""
SENTENCE = "Angela Merkel met Emmanuel Macron in Berlin on Monday to talk about the European Union budget . "


def rss_growth_megabytes(run_dir: Path, inputs: Path) -> tuple[int, int]:
    """Resident memory while streaming predictions, above what the loaded model holds (sampled, Linux)."""
    done = subprocess.run(
        [sys.executable, "-c", STREAM_GROWTH, str(run_dir), str(inputs)], capture_output=True, text=True, check=True
    )
    count, megabytes = done.stdout.split()
    return int(count), int(megabytes)


@pytest.mark.slow
def test_predict_memory_stays_flat_for_ten_times_the_inputs(tiny_bert: Path, ner_recipe, tmp_path: Path) -> None:
    run_dir = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "run", epochs=1)).run_dir
    growth = {}
    for count in (600, 6_000):
        inputs = tmp_path / f"{count}.jsonl"
        inputs.write_text("".join(json.dumps({"text": f"{i} {SENTENCE}"}) + "\n" for i in range(count)))
        predicted, growth[count] = rss_growth_megabytes(run_dir, inputs)
        assert predicted == count
    print(f"RSS growth while streaming: {growth[600]} MB for 600 inputs, {growth[6_000]} MB for 6,000")
    assert growth[6_000] <= 2 * max(growth[600], 20), growth
