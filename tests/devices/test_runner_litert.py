"""``litert_runner.py`` (the script pushed to Linux boards) and the host's reading of its JSON:
its copy of the probe/digest code agrees with ``devices.probe``, it runs a real tiny .tflite in
a subprocess with this venv's Python, and its checksum equals the host's for the same probe."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devices import probe
from devices.base import DeviceError, Measurement, MeasureSettings
from devices.local import LocalDevice
from devices.runners import RUNNER_SCRIPT, RunnerOutput, RunnerOutputError, parse_runner_output, runner_argv
from devices.runners import litert_runner as runner

FAST = MeasureSettings(threads=1, warmup_runs=2, min_seconds=0.2, min_runs=10)


# --- the copied code agrees with devices.probe ------------------------------------------------

def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 10))
    return [
        rng.random((1, 10), dtype=np.float32),
        np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True),
        rng.integers(-128, 127, (2, 5)).astype(np.int8),
        np.array([[0.5, np.nan, np.inf, -np.inf]]),
        np.zeros((3, 0)),
        np.zeros((2, 2)),
        np.float32(7.25),
        rng.random((2, 3, 4)) * 1e-6,
        np.array([True, False]),
    ]


def test_runner_digest_equals_the_hosts() -> None:
    assert runner.DIGEST_VERSION == probe.DIGEST_VERSION
    assert runner.SIGNIFICANT_DIGITS == probe.SIGNIFICANT_DIGITS
    for array in _arrays():
        assert runner.output_digest(array) == probe.output_digest(array)
    with pytest.raises(TypeError):
        runner.output_digest(np.array(["a"]))


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "uint8", "int16", "int32", "bool"])
def test_runner_probe_input_equals_the_hosts(dtype: str) -> None:
    for seed in (0, 7):
        ours = runner.make_probe_input((2, 3, 4), dtype, seed=seed)
        theirs = probe.make_probe_input((2, 3, 4), dtype, seed=seed)
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


def test_runner_dequantize_equals_the_hosts() -> None:
    values = np.array([[-128, 0, 5, 127]], dtype=np.int8)
    for detail in ({"quantization": (0.02, -3)}, {"quantization": (0.0, 0)}, {}):
        assert np.array_equal(runner.dequantize(values, detail), probe.dequantize(values, detail))


def test_runner_imports_only_stdlib_numpy_and_litert() -> None:
    tree = ast.parse(RUNNER_SCRIPT.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots - set(sys.stdlib_module_names) <= {"numpy", "ai_edge_litert"}, roots


# --- the script in a subprocess ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from search.lowering import lower

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,), name="input")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax", name="dense")(hidden)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).random((8, 16)).astype(np.float32)
    path = tmp_path_factory.mktemp("runner") / "tiny.tflite"
    path.write_bytes(lower(model, {"hidden": "float32", "dense": "float32"}, x).tflite_bytes)
    return path


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_runner_measures_and_matches_the_host_checksum(tiny_model: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(5).random((1, 16))  # float64, cast by the runner as by the host
    np.save(tmp_path / "probe.npy", x)
    argv = runner_argv(sys.executable, str(RUNNER_SCRIPT), str(tiny_model), FAST,
                       probe=str(tmp_path / "probe.npy"))
    done = _run(argv)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(done.stdout.strip().splitlines()) == 1  # exactly one JSON object; chatter on stderr
    data = json.loads(done.stdout)
    assert data["threads"] == 1 and data["warmup_runs"] == 2
    assert data["n_inferences"] >= FAST.min_runs and data["window_s"] >= FAST.min_seconds
    assert data["latency_ms_p90"] >= data["latency_ms_median"] > 0
    for key in ("python", "numpy", "ai_edge_litert", "machine", "kernel", "cpu_model"):
        assert data["fingerprint"][key]
    assert data["fingerprint"]["numpy"] == np.__version__

    host = LocalDevice().measure(tiny_model, FAST, x)
    assert data["output_checksum"] == host.output_checksum

    result = parse_runner_output(done.stdout)
    assert result.output_checksum == host.output_checksum
    assert result.n_inferences == data["n_inferences"]
    measurement = result.to_measurement("pi5", notes=("n",))
    assert isinstance(measurement, Measurement) and measurement.device == "pi5"
    assert measurement.energy_source == "none" and measurement.notes == ("n",)
    assert measurement.fingerprint["kernel"] == data["fingerprint"]["kernel"]


def test_runner_without_probe_uses_the_shared_probe(tiny_model: Path) -> None:
    settings = MeasureSettings(threads=2, warmup_runs=0, min_seconds=0.0, min_runs=3)
    done = _run(runner_argv(sys.executable, str(RUNNER_SCRIPT), str(tiny_model), settings))
    result = parse_runner_output(done.stdout)
    assert result.threads == 2 and result.n_inferences == 3
    assert result.output_checksum == LocalDevice().measure(tiny_model, settings).output_checksum


@pytest.mark.parametrize("case, kind, code", [
    ("missing", "model_missing", 1),
    ("not_tflite", "model_invalid", 1),
    ("bad_probe_shape", "probe_invalid", 1),
    ("missing_probe", "probe_missing", 1),
    ("usage", "usage", 2),
])
def test_runner_errors_are_one_json_object(tiny_model: Path, tmp_path: Path, case: str, kind: str,
                                           code: int) -> None:
    model = str(tiny_model)
    extra: list[str] = []
    if case == "missing":
        model = str(tmp_path / "gone.tflite")
    elif case == "not_tflite":
        (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
        model = str(tmp_path / "junk.tflite")
    elif case == "bad_probe_shape":
        np.save(tmp_path / "p.npy", np.zeros((1, 5), np.float32))
        extra = ["--probe", str(tmp_path / "p.npy")]
    elif case == "missing_probe":
        extra = ["--probe", str(tmp_path / "nope.npy")]
    elif case == "usage":
        extra = ["--min-runs", "zero"]
    done = _run([sys.executable, str(RUNNER_SCRIPT), model, "--min-runs", "1",
                 "--min-seconds", "0", *extra])
    assert done.returncode == code
    data = json.loads(done.stdout)
    assert set(data) == {"error", "error_kind"} and data["error_kind"] == kind
    with pytest.raises(RunnerOutputError) as info:
        parse_runner_output(done.stdout)
    assert info.value.runner_error == data["error"] and kind in str(info.value)
    assert isinstance(info.value, DeviceError)


# --- parse_runner_output on malformed input ---------------------------------------------------

GOOD = {"latency_ms_median": 1.5, "latency_ms_p90": 2.0, "n_inferences": 40, "window_s": 1.2,
        "threads": 4, "output_checksum": "v1:" + "0" * 64, "fingerprint": {"machine": "aarch64"}}


def test_parse_runner_output_accepts_good_json_and_trailing_chatter() -> None:
    expected = RunnerOutput(1.5, 2.0, 40, 1.2, 4, "v1:" + "0" * 64, {"machine": "aarch64"})
    assert parse_runner_output(json.dumps(GOOD)) == expected
    assert parse_runner_output("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
                               + json.dumps(GOOD) + "\n") == expected


@pytest.mark.parametrize("stdout, expected", [
    ("", "not one JSON object"),
    ("Traceback (most recent call last):\n  ...", "not one JSON object"),
    ("[1, 2]", "not one JSON object"),
    ('{"latency_ms_median": 1.5', "not one JSON object"),
    (json.dumps({**GOOD, "n_inferences": "40"}), "n_inferences is '40'"),
    (json.dumps({**GOOD, "n_inferences": True}), "n_inferences is True"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "window_s"}), "window_s is None"),
    (json.dumps({**GOOD, "latency_ms_median": float("nan")}), "latency_ms_median is nan"),
    (json.dumps({**GOOD, "output_checksum": 5}), "output_checksum 5"),
    (json.dumps({**GOOD, "fingerprint": {"a": 1}}), "not an object of strings"),
])
def test_parse_runner_output_rejects_malformed(stdout: str, expected: str) -> None:
    with pytest.raises(RunnerOutputError, match="litert_runner output") as info:
        parse_runner_output(stdout)
    assert expected in str(info.value) and info.value.runner_error is None


def test_runner_argv_is_a_plain_list() -> None:
    argv = runner_argv("python3", "/tmp/r dir/litert_runner.py", "/tmp/m.tflite", FAST, probe="/tmp/p.npy")
    assert argv == ["python3", "/tmp/r dir/litert_runner.py", "/tmp/m.tflite", "--threads", "1",
                    "--warmup-runs", "2", "--min-seconds", "0.2", "--min-runs", "10",
                    "--probe", "/tmp/p.npy"]
