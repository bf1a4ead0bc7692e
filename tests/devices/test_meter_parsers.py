"""Every power-source parser against the samples in shared/reference/devices.md, plus
malformed input (empty, truncated, garbage numbers, missing fields) -> MeterParseError."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.meters import (
    FuelGaugeConvention,
    MeterError,
    MeterParseError,
    detect_fuel_gauge_convention,
)
from devices.meters.parsers import (
    BatteryReading,
    parse_battery,
    parse_command_meter_output,
    parse_hwmon,
    parse_jetson_ina3221,
    parse_odpm_enabled_rails,
    parse_odpm_energy_value,
    parse_odpm_energy_values,
    parse_pmic_read_adc,
    parse_powerstats_energy_meter,
    parse_rapl,
    parse_tegrastats_line,
)
from devices.meters.sources import (
    battery_power_reading,
    command_counter_reading,
    command_power_reading,
    hwmon_power_reading,
    odpm_counter_reading,
    pmic_adc_power_reading,
    powerstats_counter_reading,
    rapl_counter_reading,
    tegrastats_power_reading,
)

SAMPLES = Path(__file__).parent / "meter_samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def assert_one_line_error(excinfo: pytest.ExceptionInfo[MeterParseError], source: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(source)
    assert "expected" in message


# --- ODPM -------------------------------------------------------------------------------------


def test_odpm_energy_value_sample() -> None:
    parsed = parse_odpm_energy_value(sample("odpm_energy_value.txt"))
    assert parsed.timestamp_ms == 349894
    assert parsed.energy_uj == {"S10M_VDD_TPU": 5578756, "S2M_VDD_CPUCL2": 30203502}
    assert parsed.channel == {"S10M_VDD_TPU": 0, "S2M_VDD_CPUCL2": 3}
    assert parsed.channel_time_ms == {"S10M_VDD_TPU": 349894, "S2M_VDD_CPUCL2": 349894}


def test_odpm_counter_reading_converts_uj_to_mj_and_merges_devices() -> None:
    other = "t=349890\nCH0(T=349890)[S1M_VDD_AMB], 1000\n"
    reading = odpm_counter_reading([sample("odpm_energy_value.txt"), other])
    assert reading.energy_mj == pytest.approx(
        {"S10M_VDD_TPU": 5578.756, "S2M_VDD_CPUCL2": 30203.502, "S1M_VDD_AMB": 1.0}
    )
    assert "S1M_VDD_AMB" in reading.raw and reading.range_mj == {}


def test_odpm_files_printed_back_to_back() -> None:
    other = "t=349890\nCH0(T=349890)[S1M_VDD_AMB], 1000\n"
    both = sample("odpm_energy_value.txt") + other
    pmics = parse_odpm_energy_values(both)
    assert [p.timestamp_ms for p in pmics] == [349894, 349890]
    assert pmics[1].energy_uj == {"S1M_VDD_AMB": 1000}
    assert odpm_counter_reading([both]).energy_mj == odpm_counter_reading(
        [sample("odpm_energy_value.txt"), other]).energy_mj
    for bad in ("CH0(T=1)[X], 5\nt=1\nCH1(T=1)[Y], 5\n", "t=1\nCH0(T=1)[X], 5\nt=2\n"):
        with pytest.raises(MeterParseError, match="ODPM energy_value"):
            parse_odpm_energy_values(bad)


def test_odpm_rail_on_two_devices_is_rejected() -> None:
    with pytest.raises(MeterError, match="S10M_VDD_TPU"):
        odpm_counter_reading([sample("odpm_energy_value.txt")] * 2)
    with pytest.raises(MeterError, match="no energy_value"):
        odpm_counter_reading([])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\n",
        "t=349894\n",  # no channels
        "CH0(T=349894)[S10M_VDD_TPU], 5578756\n",  # no t= line
        "t=abc\nCH0(T=1)[X], 5\n",
        "t=1\nCH0(T=1)[X], -5\n",
        "t=1\nCH0(T=1)[X] 5\n",  # missing comma
        "t=1\nCH0(T=1)[X], 5\nCH1(T=1)[X], 6\n",  # duplicate rail
        "t=1\nCH0(T=1)[X], 5\nCH0(T=1)[Y], 6\n",  # duplicate channel
        "t=1\nCH0(T=1)[X], 5.5\n",
    ],
)
def test_odpm_energy_value_malformed(text: str) -> None:
    with pytest.raises(MeterParseError) as excinfo:
        parse_odpm_energy_value(text)
    assert_one_line_error(excinfo, "ODPM energy_value")


@pytest.mark.parametrize(
    "name", ["odpm_energy_value_truncated.txt", "odpm_energy_value_garbage.txt"]
)
def test_odpm_energy_value_malformed_fixtures(name: str) -> None:
    with pytest.raises(MeterParseError, match="expected 'CH<n>"):
        parse_odpm_energy_value(sample(name))


def test_odpm_enabled_rails_sample() -> None:
    rails = parse_odpm_enabled_rails(sample("odpm_enabled_rails.txt"))
    assert [(r.channel, r.rail, r.subsystem) for r in rails] == [(0, "S1M_VDD_AMB", "amb")]
    more = parse_odpm_enabled_rails("CH0[S1M_VDD_AMB]:amb\nCH5[S4M_VDD_CPUCL0]:CPU(LITTLE)\n")
    assert more[1].subsystem == "CPU(LITTLE)" and more[1].channel == 5


@pytest.mark.parametrize(
    "text", ["", "CH0 S1M_VDD_AMB amb", "CHx[S1M_VDD_AMB]:amb", "CH0[A]:a\nCH1[A]:b"]
)
def test_odpm_enabled_rails_malformed(text: str) -> None:
    with pytest.raises(MeterParseError) as excinfo:
        parse_odpm_enabled_rails(text)
    assert_one_line_error(excinfo, "ODPM enabled_rails")


# --- PowerStats HAL ---------------------------------------------------------------------------


def test_powerstats_sample() -> None:
    parsed = parse_powerstats_energy_meter(sample("powerstats_dumpsys.txt"))
    assert parsed.energy_mj == {"VSYS_PWR_MODEM": pytest.approx(1234.56)}
    assert parsed.subsystem == {"VSYS_PWR_MODEM": "Modem"}
    assert powerstats_counter_reading(sample("powerstats_dumpsys.txt")).energy_mj == {
        "VSYS_PWR_MODEM": pytest.approx(1234.56)
    }


@pytest.mark.parametrize("name", ["powerstats_dumpsys_full.txt", "powerstats_dumpsys_delta.txt"])
def test_powerstats_full_and_delta_dumps_read_cumulative_values(name: str) -> None:
    parsed = parse_powerstats_energy_meter(sample(name))
    assert parsed.energy_mj == pytest.approx(
        {"S10M_VDD_TPU": 5578.76, "S2M_VDD_CPUCL2": 30203.5, "VSYS_PWR_MODEM": 1234.56}
    )
    assert parsed.subsystem["S2M_VDD_CPUCL2"] == "CPU(BIG)"


def test_powerstats_rejects_the_docs_elision_line() -> None:
    # devices.md elides rows with "..."; a real dump never contains it, so it is malformed.
    doc_block = sample("powerstats_dumpsys.txt").replace("mWs\n", "mWs\n...\n", 1)
    with pytest.raises(MeterParseError, match=r"'\.\.\.'"):
        parse_powerstats_energy_meter(doc_block)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no header here\n",
        sample("powerstats_dumpsys_truncated.txt"),
        "===== PowerStats HAL 2.0 energy meter =====\n===== End of PowerStats HAL 2.0 energy "
        "meter =====\n",  # no channels
        "== PowerStats HAL 2.0 energy meter ==\n  [A]:a   12.3.4 mWs\n"
        "== End of PowerStats HAL 2.0 energy meter ==\n",
        "== PowerStats HAL 2.0 energy meter ==\n  [A]:a   12.34 mJ\n"
        "== End of PowerStats HAL 2.0 energy meter ==\n",
        "== PowerStats HAL 2.0 energy meter ==\n  [A]:a   nan mWs\n"
        "== End of PowerStats HAL 2.0 energy meter ==\n",
        "== PowerStats HAL 2.0 energy meter ==\n  [A]:a   1e999 mWs\n"
        "== End of PowerStats HAL 2.0 energy meter ==\n",
        "== PowerStats HAL 2.0 energy meter ==\n  [A]:a 1 mWs\n  [A]:b 2 mWs\n"
        "== End of PowerStats HAL 2.0 energy meter ==\n",
    ],
)
def test_powerstats_malformed(text: str) -> None:
    with pytest.raises(MeterParseError) as excinfo:
        parse_powerstats_energy_meter(text)
    assert_one_line_error(excinfo, "PowerStats HAL dumpsys")


# --- Battery fuel gauge -----------------------------------------------------------------------


def test_battery_files_parse() -> None:
    assert parse_battery("-412345\n", "3987654\n") == BatteryReading(-412345, 3987654)


@pytest.mark.parametrize(
    ("current", "voltage"),
    [("", "3987654"), ("12.5", "3987654"), ("-412345", "abc"), ("-412345", "-1"),
     ("1\n2", "3987654")],
)
def test_battery_files_malformed(current: str, voltage: str) -> None:
    with pytest.raises(MeterParseError, match="^battery"):
        parse_battery(current, voltage)


@pytest.mark.parametrize(
    ("currents", "unit", "sign"),
    [
        ([-300_000, -310_000, -295_000], "uA", -1),  # documented: µA, negative = discharge
        ([300_000, 310_000, 295_000], "uA", 1),  # flipped sign
        ([-300, -310, -295], "mA", -1),  # mA gauge
        ([300, 310, 295], "mA", 1),
    ],
)
def test_fuel_gauge_convention_detection(currents: list[int], unit: str, sign: int) -> None:
    samples = [BatteryReading(c, 3_900_000) for c in currents]
    convention = detect_fuel_gauge_convention(samples)
    assert convention == FuelGaugeConvention(unit, sign)  # type: ignore[arg-type]
    # ~300 mA at 3.9 V is ~1.2 W drawn from the battery, whatever the convention.
    assert convention.discharge_power_mw(samples[0]) == pytest.approx(300 * 3.9, rel=1e-9)
    assert convention.discharge_current_ma(samples[0]) == pytest.approx(300)


@pytest.mark.parametrize(
    ("samples", "match"),
    [
        ([], "no idle samples"),
        ([BatteryReading(-300_000, 3_900)], "not a battery voltage in µV"),
        ([BatteryReading(-300_000, 3_900_000), BatteryReading(300_000, 3_900_000)],
         "change sign"),
        ([BatteryReading(0, 3_900_000)], "zero"),
        ([BatteryReading(-5, 3_900_000)], "expected exactly one"),  # 0.02 mW or 19.5 mW
        ([BatteryReading(-9_000_000, 3_900_000)], "expected exactly one"),  # 35 W or 35 kW
    ],
)
def test_fuel_gauge_convention_detection_refuses_implausible(
    samples: list[BatteryReading], match: str
) -> None:
    with pytest.raises(MeterError, match=match):
        detect_fuel_gauge_convention(samples)


def test_battery_power_reading_and_charging_refusal() -> None:
    convention = FuelGaugeConvention("uA", -1)
    reading = battery_power_reading("-500000", "4000000", convention)
    assert reading.power_mw == {"battery": pytest.approx(2000.0)}
    with pytest.raises(MeterError, match="charging"):
        battery_power_reading("500000", "4000000", convention)
    with pytest.raises(ValueError, match="current_unit"):
        FuelGaugeConvention("A", -1)  # type: ignore[arg-type]


# --- Raspberry Pi 5 PMIC ----------------------------------------------------------------------


def test_pi5_pmic_sample() -> None:
    parsed = parse_pmic_read_adc(sample("pi5_pmic_read_adc.txt"))
    assert parsed.power_mw == {"VDD_CORE": pytest.approx(6.22421 * 0.861733 * 1000)}
    assert parsed.power_mw["VDD_CORE"] == pytest.approx(5363.6, abs=0.1)
    assert parsed.voltage_only_mv == pytest.approx({"EXT5V": 5090.66, "BATT": 0.0})
    assert parsed.current_only_ma == pytest.approx({"DDR_VDD2": 225.4398})
    # Only paired rails become power samples; EXT5V is never summed.
    reading = pmic_adc_power_reading(sample("pi5_pmic_read_adc.txt"))
    assert set(reading.power_mw) == {"VDD_CORE"}


def test_pi5_pmic_pairs_by_rail_name_not_channel() -> None:
    text = ("  3V3_SYS_A current(12)=0.10000000A\n  1V8_SYS_A current(13)=2e-1A\n"
            "  1V8_SYS_V volt(2)=1.80000000V\n  3V3_SYS_V volt(40)=3.30000000V\n")
    assert parse_pmic_read_adc(text).power_mw == pytest.approx({"3V3_SYS": 330.0, "1V8_SYS": 360.0})


@pytest.mark.parametrize(
    "text",
    [
        "",
        sample("pi5_pmic_read_adc_garbage.txt"),
        "  VDD_CORE_A current(7)=6.22421000V\n",  # unit mismatch
        "  VDD_CORE_A volt(7)=6.22421000A\n",  # kind mismatch
        "  VDD_CORE_A current(7)=\n",
        "  VDD_CORE_A current(7)=1A\n  VDD_CORE_A current(8)=2A\n",
        'error=1 error_msg="Command not registered"\n',
        "  VDD_CORE_A current(7)=inf A\n",
    ],
)
def test_pi5_pmic_malformed(text: str) -> None:
    with pytest.raises(MeterParseError) as excinfo:
        parse_pmic_read_adc(text)
    assert_one_line_error(excinfo, "vcgencmd pmic_read_adc")


# --- Linux hwmon and Jetson -------------------------------------------------------------------


def test_hwmon_prefers_power_input() -> None:
    files = {"name": "ina226\n", "power1_input": "1234567\n", "curr1_input": "250\n",
             "in1_input": "5000\n", "update_interval": "2\n"}
    parsed = parse_hwmon(files)
    channel = parsed.channels["ina226"]
    assert channel.power_mw == pytest.approx(1234.567)  # µW -> mW, not V × I (1250 mW)
    assert channel.power_from_sensor
    assert (channel.voltage_mv, channel.current_ma) == (5000.0, 250.0)
    assert parsed.update_interval_ms == 2
    assert hwmon_power_reading(files).power_mw == {"ina226": pytest.approx(1234.567)}


def test_hwmon_falls_back_to_v_times_i_and_uses_label() -> None:
    files = {"name": "ina219", "in1_input": "5100", "curr1_input": "-200", "in1_label": "VBUS"}
    parsed = parse_hwmon(files)
    assert parsed.power_mw == {"VBUS": pytest.approx(-1020.0)}
    assert not parsed.channels["VBUS"].power_from_sensor
    assert parsed.update_interval_ms is None


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"name": ""},
        {"name": "lm75", "power1_input": "1"},
        {"name": "ina226"},  # nothing to read
        {"name": "ina226", "in1_input": "5000"},  # V without I
        {"name": "ina226", "power1_input": "12.5"},
        {"name": "ina226", "power1_input": ""},
        {"name": "ina260", "power1_input": "1", "update_interval": "fast"},
    ],
)
def test_hwmon_malformed(files: dict[str, str]) -> None:
    with pytest.raises(MeterParseError) as excinfo:
        parse_hwmon(files)
    assert "\n" not in str(excinfo.value) and "hwmon" in str(excinfo.value)


JETSON = {
    "name": "ina3221\n",
    "in1_label": "VDD_IN\n", "in1_input": "5000\n", "curr1_input": "1153\n",
    "in2_label": "VDD_CPU_GPU_CV\n", "in2_input": "4992\n", "curr2_input": "310\n",
    "in3_label": "VDD_SOC\n", "in3_input": "4990\n", "curr3_input": "300\n",
    "in7_label": "sum of shunt voltages\n", "in7_input": "1234\n",
    "curr1_crit": "20000\n",
}


def test_jetson_ina3221() -> None:
    parsed = parse_jetson_ina3221(JETSON)
    assert parsed.power_mw == pytest.approx(
        {"VDD_IN": 5765.0, "VDD_CPU_GPU_CV": 1547.52, "VDD_SOC": 1497.0}
    )
    assert parse_hwmon(JETSON) == parsed  # found through the generic hwmon entry point too


@pytest.mark.parametrize(
    "files",
    [
        {"name": "ina3221", "in1_input": "5000"},  # no channels with a current
        {"name": "ina3221", "curr1_input": "100"},  # current without voltage
        {"name": "ina3221", "curr1_input": "1x0", "in1_input": "5000"},
        {"name": "ina226", "curr1_input": "100", "in1_input": "5000"},
        {"curr1_input": "1", "in1_input": "1", "curr2_input": "1", "in2_input": "1",
         "in1_label": "A", "in2_label": "A"},
    ],
)
def test_jetson_ina3221_malformed(files: dict[str, str]) -> None:
    with pytest.raises(MeterParseError, match="ina3221"):
        parse_jetson_ina3221(files)


def test_tegrastats_sample() -> None:
    parsed = parse_tegrastats_line(sample("tegrastats.txt"))
    assert parsed.power_mw == {"VDD_IN": 5765.0, "VDD_CPU_GPU_CV": 1548.0, "VDD_SOC": 1497.0}
    assert parsed.average_power_mw == {"VDD_IN": 5800.0, "VDD_CPU_GPU_CV": 1600.0,
                                       "VDD_SOC": 1500.0}
    full = ("RAM 2048/7765MB (lfb 1x4MB) SWAP 0/3882MB (cached 0MB) CPU [2%@1190,off] "
            "EMC_FREQ 0% GR3D_FREQ 0% cpu@45.5C " + sample("tegrastats.txt").strip())
    assert parse_tegrastats_line(full).power_mw == parsed.power_mw
    assert tegrastats_power_reading(full).power_mw["VDD_IN"] == 5765.0


@pytest.mark.parametrize(
    "line",
    [
        "",
        "RAM 2048/7765MB SWAP 0/3882MB",  # no power fields
        sample("tegrastats_garbage.txt"),
        "5765mW/5800mW",  # no rail name
        "VDD_IN 5765mW",  # no average
        "VDD_IN 1mW/1mW VDD_IN 2mW/2mW",
        "VDD_IN 1mW/1mW\nVDD_IN 2mW/2mW",  # two lines
    ],
)
def test_tegrastats_malformed(line: str) -> None:
    with pytest.raises(MeterParseError) as excinfo:
        parse_tegrastats_line(line)
    assert_one_line_error(excinfo, "tegrastats")


# --- RAPL -------------------------------------------------------------------------------------


def test_rapl() -> None:
    parsed = parse_rapl("123456789\n", "262143328850\n")
    assert (parsed.energy_uj, parsed.max_energy_range_uj) == (123456789, 262143328850)
    reading = rapl_counter_reading("123456789\n", "262143328850\n", rail="package-0")
    assert reading.energy_mj == {"package-0": pytest.approx(123456.789)}
    assert reading.range_mj == {"package-0": pytest.approx(262143328.850)}


@pytest.mark.parametrize(
    ("energy", "limit"),
    [("", "100"), ("abc", "100"), ("10", ""), ("10", "0"), ("101", "100"), ("-1", "100"),
     ("1.5", "100")],
)
def test_rapl_malformed(energy: str, limit: str) -> None:
    with pytest.raises(MeterParseError, match="^RAPL"):
        parse_rapl(energy, limit)


# --- External command -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "energy_mj", "power_mw"),
    [("12.345\n", 12345.0, None), ("12.345 J", 12345.0, None), ("12.345J\n", 12345.0, None),
     ("3.2 W\n", None, 3200.0), ("1e2 J", 100000.0, None)],
)
def test_command_meter(output: str, energy_mj: float | None, power_mw: float | None) -> None:
    parsed = parse_command_meter_output(output)
    assert parsed.energy_mj == (None if energy_mj is None else pytest.approx(energy_mj))
    assert parsed.power_mw == (None if power_mw is None else pytest.approx(power_mw))


def test_command_meter_readings_check_the_kind() -> None:
    assert command_counter_reading("12.5 J").energy_mj == {"command": 12500.0}
    assert command_power_reading("2 W", rail="usb").power_mw == {"usb": 2000.0}
    with pytest.raises(MeterError, match="sampling meter"):
        command_counter_reading("2 W")
    with pytest.raises(MeterError, match="counter meter"):
        command_power_reading("2 J")


@pytest.mark.parametrize(
    "output", ["", "abc", "12.3 kWh", "12.3 J extra", "1\n2", "-1 J", "nan", "1_000", "12..3"]
)
def test_command_meter_malformed(output: str) -> None:
    with pytest.raises(MeterParseError) as excinfo:
        parse_command_meter_output(output)
    assert_one_line_error(excinfo, "meter command output")
