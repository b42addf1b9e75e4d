"""GPU parsing on real nvidia-smi captures (shared/fixtures/nvidia-smi) and on failure text."""

from __future__ import annotations

import pytest

from skeleton_app.gpu import (
    QUERY_ARGS,
    QUERY_FIELDS,
    Gpu,
    GpuReport,
    GpuState,
    parse_gpu_query,
    report_from_command,
)
from tests.support.shared_fixtures import nvidia_smi_fixture

H200 = Gpu(
    index=0,
    name="NVIDIA H200",
    uuid="GPU-f97524f0-6f64-301f-4408-67f3294c5a6c",
    memory_total_mib=143771,
    memory_used_mib=0,
    memory_free_mib=143156,
    utilization_pct=0,
    temperature_c=38,
    power_w=126.35,
    driver="580.159.04",
)

# What nvidia-smi prints (exit 9) on a node whose kernel module is not loaded.
DRIVER_FAILURE = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n\n"
)


def test_query_args_match_the_captured_command() -> None:
    readme = nvidia_smi_fixture("README.md").read_text()
    assert f"nvidia-smi {' '.join(QUERY_ARGS)}" in readme
    assert QUERY_FIELDS[0] == "index"


def test_real_noheader_nounits_capture() -> None:
    text = nvidia_smi_fixture("nvidia-smi-query.csv").read_text()
    assert parse_gpu_query(text) == [H200]


def test_real_header_with_units_capture() -> None:
    # Different columns, units in the header and after every number.
    text = nvidia_smi_fixture("nvidia-smi-query-header.csv").read_text()
    assert parse_gpu_query(text) == [
        Gpu(
            index=0,
            name="NVIDIA H200",
            memory_total_mib=143771,
            memory_used_mib=0,
            utilization_pct=0,
        )
    ]


def test_real_capture_through_report() -> None:
    text = nvidia_smi_fixture("nvidia-smi-query.csv").read_text()
    report = report_from_command(0, text)
    assert report == GpuReport(GpuState.OK, gpus=(H200,), exit_code=0)


def test_other_real_outputs_are_not_mistaken_for_gpus() -> None:
    # The human table, `-L` and XML are what a misconfigured probe would get: errors, not GPUs.
    for name in ("nvidia-smi.txt", "nvidia-smi-L.txt", "nvidia-smi-q.xml"):
        report = report_from_command(0, nvidia_smi_fixture(name).read_text())
        assert report.state is GpuState.ERROR, name
        assert report.error is not None and report.error.startswith("unexpected nvidia-smi output")


def test_unavailable_fields_become_none() -> None:
    line = (
        "1, NVIDIA A100-SXM4-80GB, GPU-1234, 81920, [N/A], 81000, [Not Supported], "
        "[Unknown Error], [N/A], 535.104.05"
    )
    (gpu,) = parse_gpu_query(line)
    assert gpu == Gpu(
        index=1,
        name="NVIDIA A100-SXM4-80GB",
        uuid="GPU-1234",
        memory_total_mib=81920,
        memory_used_mib=None,
        memory_free_mib=81000,
        utilization_pct=None,
        temperature_c=None,
        power_w=None,
        driver="535.104.05",
    )


def test_several_gpus_blank_lines_and_crlf() -> None:
    text = (
        "0, NVIDIA H200, GPU-a, 143771, 1024, 142000, 35, 40, 300.50, 580.159.04\r\n"
        "\r\n"
        "1, NVIDIA H200, GPU-b, 143771, 2048, 141000, 70, 52, 410, 580.159.04\r\n"
    )
    gpus = parse_gpu_query(text)
    assert [g.index for g in gpus] == [0, 1]
    assert [g.memory_used_mib for g in gpus] == [1024, 2048]
    assert gpus[1].power_w == 410.0
    assert gpus[1].temperature_c == 52


def test_header_variant_with_na_and_fields_in_another_order() -> None:
    text = (
        "name, index, temperature.gpu, power.draw [W], memory.used [MiB]\n"
        "Tesla T4, 3, 41, [N/A], 15 MiB\n"
    )
    (gpu,) = parse_gpu_query(text)
    assert (gpu.index, gpu.name, gpu.temperature_c, gpu.power_w) == (3, "Tesla T4", 41, None)
    assert gpu.memory_used_mib == 15
    assert gpu.memory_total_mib is None


def test_header_without_index_numbers_rows_in_order() -> None:
    gpus = parse_gpu_query("name, memory.total [MiB]\nA, 10 MiB\nB, 20 MiB\n")
    assert [(g.index, g.name) for g in gpus] == [(0, "A"), (1, "B")]


@pytest.mark.parametrize("text", ["", "\n", "  \n\n"])
def test_empty_output_is_no_gpus(text: str) -> None:
    assert parse_gpu_query(text) == []
    assert report_from_command(0, text) == GpuReport.found([])


def test_header_only_is_no_gpus() -> None:
    text = nvidia_smi_fixture("nvidia-smi-query-header.csv").read_text().splitlines()[0]
    assert parse_gpu_query(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "No devices were found",
        "0, NVIDIA H200, GPU-x, lots, 0, 0, 0, 38, 126.35, 580",  # a word where a number goes
        "0, NVIDIA H200",  # too few fields
        "0, NVIDIA, H200, GPU-x, 1, 0, 0, 0, 38, 126.35, 580",  # too many
    ],
)
def test_malformed_rows_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_gpu_query(text)
    report = report_from_command(0, text)
    assert report.state is GpuState.ERROR
    assert report.exit_code == 0


def test_broken_driver_is_an_error_with_its_first_line() -> None:
    report = report_from_command(9, DRIVER_FAILURE)
    assert report.state is GpuState.ERROR
    assert report.exit_code == 9
    assert report.error == DRIVER_FAILURE.splitlines()[0]
    assert report.gpus == ()


def test_failure_without_output_names_the_exit_code() -> None:
    report = report_from_command(255, "")
    assert report == GpuReport.failed("nvidia-smi failed with exit code 255", exit_code=255)


def test_missing_command_is_none_not_an_error() -> None:
    report = report_from_command(127, "sh: 1: nvidia-smi: not found\n")
    assert report == GpuReport(GpuState.NONE, exit_code=127)
    assert report.error is None


def test_values_are_frozen() -> None:
    with pytest.raises(AttributeError):
        H200.index = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        GpuReport.missing().state = GpuState.OK  # type: ignore[misc]
