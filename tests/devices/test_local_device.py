"""The host as a device: honest timing on real tiny .tflite files, no energy, stable checksums."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from devices.base import DeviceError, MeasureSettings
from devices.local import NO_METER_NOTE, LocalDevice, host_fingerprint, parse_cpu_model
from devices.probe import dequantize, make_probe_input, output_digest

FAST = MeasureSettings(threads=1, warmup_runs=2, min_seconds=0.2, min_runs=10)


def _convert(seed: int, int8: bool = False) -> bytes:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    function = tf.function(lambda x: model(x, training=False),
                           input_signature=[tf.TensorSpec((1, 8, 8, 1), tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], model)
    converter.experimental_lower_to_saved_model = False
    if int8:
        samples = np.random.default_rng(0).random((20, 1, 8, 8, 1)).astype(np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():  # int8 edges: "statistics for quantized inputs" notice
        warnings.simplefilter("ignore")
        return bytes(converter.convert())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, seed, int8 in (("a", 0, False), ("b", 1, False), ("q", 0, True)):
        paths[name] = root / f"{name}.tflite"
        paths[name].write_bytes(_convert(seed, int8))
    return paths


@pytest.fixture(scope="module")
def probe() -> np.ndarray:
    return np.random.default_rng(5).random((1, 8, 8, 1))  # float64, as a dataset slice may be


def test_measure_times_honestly_and_reports_no_energy(models, probe) -> None:
    device = LocalDevice()
    assert device.name == "local" and device.has_energy_meter is False
    result = device.measure(models["a"], FAST, probe)
    assert result.device == "local" and result.threads == 1
    assert result.n_inferences >= FAST.min_runs
    assert result.window_s >= FAST.min_seconds
    assert result.latency_ms_p90 >= result.latency_ms_median > 0
    # the window covers the timed inferences and little else
    assert result.latency_ms_median * result.n_inferences / 1e3 <= result.window_s * 1.01
    assert result.energy_mj_median is None and result.energy_mj_spread is None
    assert result.power_mw_mean is None and result.energy_source == "none"
    assert NO_METER_NOTE in result.notes and "estimate" in NO_METER_NOTE
    for key in ("cpu_model", "kernel", "python", "ai_edge_litert", "numpy"):
        assert result.fingerprint[key]
    assert result.to_dict()["energy_source"] == "none"


def test_min_runs_bounds_the_loop_when_seconds_are_zero(models) -> None:
    result = LocalDevice().measure(models["a"], MeasureSettings(warmup_runs=0, min_seconds=0.0,
                                                                min_runs=33))
    assert result.n_inferences == 33


def test_checksum_is_stable_and_tells_models_apart(models, probe) -> None:
    device = LocalDevice()
    first = device.measure(models["a"], FAST, probe)
    again = device.measure(models["a"], MeasureSettings(threads=2, warmup_runs=0, min_runs=3,
                                                        min_seconds=0.0), probe)
    other = device.measure(models["b"], FAST, probe)
    assert first.output_checksum == again.output_checksum
    assert first.output_checksum != other.output_checksum
    assert first.output_checksum.startswith("v1:")
    # no probe: a deterministic input, so still stable
    assert (device.measure(models["a"], FAST).output_checksum
            == device.measure(models["a"], FAST).output_checksum)


def test_int8_model_takes_a_float_probe(models, probe) -> None:
    result = LocalDevice().measure(models["q"], FAST, probe)
    assert result.n_inferences >= FAST.min_runs and result.output_checksum


def test_errors_name_the_device_and_file(models, probe, tmp_path) -> None:
    device = LocalDevice()
    with pytest.raises(DeviceError, match=r"'local'.*missing\.tflite.*does not exist"):
        device.measure(tmp_path / "missing.tflite", FAST)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is not a model at all" * 10)
    with pytest.raises(DeviceError, match=r"'local'.*junk\.tflite.*not a \.tflite"):
        device.measure(junk, FAST)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(models["a"].read_bytes()[:200])
    with pytest.raises(DeviceError, match=r"'local'.*truncated\.tflite"):
        device.measure(truncated, FAST)
    with pytest.raises(DeviceError, match=r"probe input for .*: shape \(1, 9, 9, 1\) does not fit"):
        device.measure(models["a"], FAST, np.zeros((1, 9, 9, 1), np.float32))
    device.close()
    with pytest.raises(DeviceError, match="closed"):
        device.measure(models["a"], FAST, probe)


# --- the shared probe module ----------------------------------------------------------------


def test_digest_ignores_float_noise_but_not_answers() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 10))
    out = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    base = output_digest(out)
    assert output_digest(out * (1 + 1e-7)) == base  # another CPU's rounding
    assert output_digest(out.astype(np.float32)) == base
    tail = np.array([[0.7, 0.2, 0.1, 1e-9, 0.0]])
    assert output_digest(tail) == output_digest([[0.7, 0.2, 0.1, 3e-9, 1e-10]])  # tail noise
    changed = out.copy()
    changed[0] = changed[0][::-1]
    assert output_digest(changed) != base
    assert output_digest(out * 1.01) != base
    assert output_digest(out.reshape(2, 20)) != base
    assert output_digest(np.array([np.nan, 1.0])) != output_digest(np.array([0.0, 1.0]))
    assert output_digest(np.zeros((0, 3))) == output_digest(np.zeros((0, 3)))
    with pytest.raises(TypeError):
        output_digest(np.array(["a"]))


def test_probe_input_is_deterministic_per_dtype() -> None:
    a = make_probe_input((1, 4, 4, 3), np.float32)
    assert a.dtype == np.float32 and np.array_equal(a, make_probe_input((1, 4, 4, 3), "float32"))
    assert a.min() >= 0 and a.max() < 1
    q = make_probe_input((1, 100), np.int8)
    assert q.dtype == np.int8 and q.min() < -64 and q.max() > 64
    assert make_probe_input((3,), np.int32).max() <= 127
    assert not np.array_equal(make_probe_input((50,), np.float32, seed=1), make_probe_input((50,), np.float32))
    with pytest.raises(ValueError, match="dynamic"):
        make_probe_input((-1, 3), np.float32)


def test_dequantize_uses_the_tensor_parameters() -> None:
    detail = {"quantization": (0.5, -3)}
    np.testing.assert_array_equal(dequantize(np.array([-3, 1], np.int8), detail), [0.0, 2.0])
    np.testing.assert_array_equal(dequantize(np.array([1.5]), {"quantization": (0.0, 0)}), [1.5])


# --- fingerprint ------------------------------------------------------------------------------

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
"""
ARM64 = """processor\t: 0
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd0b
"""
PI4 = ARM64.replace("0xd0b", "0xd08") + "\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"


def test_cpu_model_from_cpuinfo_samples() -> None:
    assert parse_cpu_model(X86) == "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz"
    assert parse_cpu_model(ARM64) == "arm implementer 0x41 part 0xd0b"
    assert parse_cpu_model(PI4) == "Raspberry Pi 4 Model B Rev 1.4"
    assert parse_cpu_model("") == ""


def test_fingerprint_reads_governor_when_present(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86)
    governor = tmp_path / "scaling_governor"
    governor.write_text("performance\n")
    found = host_fingerprint(cpuinfo, governor)
    assert found["cpu_model"].startswith("Intel") and found["governor"] == "performance"
    assert "governor" not in host_fingerprint(cpuinfo, tmp_path / "absent")
    assert all(isinstance(v, str) for v in found.values())
