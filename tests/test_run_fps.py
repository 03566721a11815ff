"""The latency harness: its JSON contract, its plot, and its pass/fail thresholds; one-line
errors from the benchmark and engine commands."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream.timing import STAGES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_fps():
    spec = importlib.util.spec_from_file_location("run_fps", ROOT / "benchmarks" / "run_fps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_fps"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_json_has_the_keys_other_tools_rely_on(run_fps, tmp_path):
    out = tmp_path / "bench.json"
    code = run_fps.main(["--source", "synthetic:320x240@30", "--frames", "12", "--warmup", "2", "--no-pace",
                         "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 12 and report["fps"] > 0 and report["source_fps"] == 30
    assert set(report["latency_ms"]) == {"p50", "p95", "p99"}
    for stage in ("capture", "preprocess", "infer", "smooth", "composite", "sink"):
        assert set(report["stages"][stage]) == {"p50", "p95", "p99"}
    assert report["stages"]["infer"]["p50"] > 0
    assert report["latency_ms"]["p50"] >= report["stages"]["infer"]["p50"]
    assert report["machine"]["cores"] >= 1 and "torch" in report["machine"]["versions"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert set(report["stage_samples"]) == set(STAGES) | {"end_to_end"}


def test_a_paced_source_faster_than_the_loop_drops_frames_and_a_slow_one_none(run_fps, tmp_path):
    fast, slow = tmp_path / "fast.json", tmp_path / "slow.json"
    assert run_fps.main(["--source", "synthetic:320x240@2000", "--frames", "10", "--warmup", "2", "--json", str(fast)]) == 0
    assert json.loads(fast.read_text())["dropped"] > 0
    assert run_fps.main(["--source", "synthetic:320x240@10", "--frames", "6", "--warmup", "2", "--json", str(slow)]) == 0
    report = json.loads(slow.read_text())
    assert report["dropped"] == 0 and report["frames"] == 6 and report["fps"] < 11


def test_the_matrix_runs_each_size_paced_and_unpaced_with_and_without_overlap(run_fps, tmp_path):
    modes = {}
    for overlap in ("--overlap", "--no-overlap"):
        out = tmp_path / f"matrix{overlap}.json"
        assert run_fps.main(["--matrix", "--backends", "onnxruntime", "--sizes", "160x120,320x240", "--frames", "4",
                             "--warmup", "1", "--fps", "200", overlap, "--json", str(out)]) == 0
        for run in json.loads(out.read_text())["runs"]:
            modes[(run["size"], run["paced"], run["overlap"])] = run["frames"]
    assert modes == {(size, paced, overlap): 4 for size in ("160x120", "320x240")
                     for paced in (True, False) for overlap in (True, False)}


def test_thresholds_fail_the_exit_code(run_fps, capsys):
    code = run_fps.main(["--source", "synthetic:160x120@30", "--frames", "5", "--warmup", "1", "--no-pace",
                         "--min-fps", "100000"])
    assert code == 1
    assert "FAIL" in capsys.readouterr().err


def test_engine_only_reports_each_backend(run_fps, tmp_path):
    out = tmp_path / "engines.json"
    assert run_fps.main(["--engine-only", "--size", "320x240", "--iterations", "5", "--json", str(out)]) == 0
    entries = {e["backend"]: e for e in json.loads(out.read_text())["engines"]}
    assert entries["onnxruntime"]["ms"]["p50"] > 0
    assert set(entries) >= {"tensorrt", "torch-cuda", "onnxruntime", "torch-cpu"}
    assert all(("ms" in entry) != ("skipped" in entry) for entry in entries.values())


@pytest.mark.parametrize("command, message, code", [
    (["benchmarks/run_fps.py", "--source", "missing.mp4"], "error: source 'missing.mp4' not found", 1),
    (["benchmarks/evaluate.py", "--data", "no/such/folder"], "error: no data folder no/such/folder", 1),
    (["-m", "engines.export", "engines/weights/compact.safetensors"], "error: engines/weights/compact.onnx exists", 2),
])
def test_every_command_gives_one_line_for_bad_input(command, message, code):
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == code and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr


def test_without_matplotlib_the_plot_is_skipped_with_one_line(run_fps, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "bench.json"
    assert run_fps.main(["--source", "synthetic:160x120@30", "--frames", "3", "--warmup", "1", "--no-pace",
                         "--json", str(out)]) == 0
    assert out.exists() and not out.with_suffix(".png").exists()
    error = capsys.readouterr().err
    assert "no plot" in error and "pip install -e '.[bench]'" in error and "Traceback" not in error


def test_the_reference_loop_without_its_model_says_how_to_get_it(run_fps, tmp_path, capsys):
    code = run_fps.main(["--source", "synthetic:160x120@30", "--frames", "3", "--warmup", "1", "--no-pace",
                         "--reference", "--mediapipe", str(tmp_path / "missing.whl")])
    error = capsys.readouterr().err
    assert code == 1 and "Traceback" not in error
    assert error.strip().splitlines()[-1].startswith("error: --reference needs") and "pip download" in error


def test_the_reference_is_the_mean_of_its_runs_before_and_after_ours(run_fps, capsys):
    def reference(fps, p95):
        return {"size": "640x480", "fps": fps, "latency_ms": {"p95": p95}, "stages": {"capture": {"p50": 1.0}}}

    bracketed = run_fps.bracketed_reference(reference(200.0, 4.0), reference(100.0, 8.0))
    assert bracketed["fps"] == 150.0 and bracketed["latency_ms"]["p95"] == 6.0
    assert (bracketed["before"]["fps"], bracketed["after"]["fps"]) == (200.0, 100.0)
    ours = {"model": "compact", "paced": False, "overlap": True, "fps": 225.0, "latency_ms": {"p95": 3.0}}
    run_fps.compare([ours], bracketed)
    assert ours["reference"] == {"fps_ratio": 1.5, "p95_latency_ratio": 0.5}
    assert "before ours 200.0, after 100.0" in capsys.readouterr().out
