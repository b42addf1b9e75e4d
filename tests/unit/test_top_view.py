"""`cluster top` without a cluster: the frame's layout (80x24, narrow terminals, "+N more"),
sparklines, sort keys, hostile node text shown as text, the history's gaps, the terminal's
key mode restored on every way out, and the live loop's keys on a real pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import termios
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from skeleton_app import cancel
from skeleton_app.app import top
from skeleton_app.app.cli import main
from skeleton_app.app.views.top import (
    SORT_KEYS,
    fit_points,
    frame,
    frame_text,
    next_sort,
    number,
    percent,
    sort_nodes,
    sparkline,
    table_rows,
)
from skeleton_app.ops.picture import ClusterPicture, NodePicture, sample_of, with_gaps
from skeleton_app.registry.metrics_history import MetricSample

NOW = 1_800_000_000.0
HOSTILE = "[red]x[/red] \x1b[2J\x1b]0;owned\x07 [link=http://e]y"


def node(i: int, **kw: object) -> NodePicture:
    history = tuple(MetricSample(at=NOW - 600 + 5 * k, load1=(k % 7) / 2, mem_total=8e9,
                                 mem_available=8e9 * (1 - k / 120)) for k in range(120))
    defaults: dict[str, object] = dict(
        id=f"node-{i:02d}", host="10.0.0.1", daemon="running", heartbeat_age=float(i),
        latest=MetricSample(at=NOW, load1=float(i), mem_total=8e9, mem_available=4e9,
                            disk_total=1e12, disk_free=2.5e11, gpu_util=(50.0, 70.0),
                            gpu_mem_used=(1000.0, 3000.0), gpu_mem_total=(8000.0, 8000.0)),
        history=history, jobs_running=i % 3, code_version="0123456789ab")
    defaults.update(kw)
    return NodePicture(**defaults)  # type: ignore[arg-type]


def picture(count: int, **kw: object) -> ClusterPicture:
    return ClusterPicture(at=NOW, source="registry", nodes=tuple(node(i) for i in range(count)),
                          **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- the pieces


def test_sparkline_scales_pads_and_merges() -> None:
    assert sparkline([0, 0.5, 1.0], 5) == "  ▁▅█"
    assert sparkline([0, 2, 4], 3) == "▁▅█"  # scaled to the largest value shown
    assert sparkline([0.1, 0.2], 2) == "▂▂"  # ...but at least to 1.0: quiet stays low
    assert sparkline([1.0, None, 1.0], 3) == "█ █"  # a missing value is a gap
    assert sparkline([0.5], 3, high=1.0) == "  ▅"
    assert sparkline(list(range(100)), 8).strip() and len(sparkline(list(range(100)), 8)) == 8
    assert sparkline([1.0], 0) == ""
    assert fit_points([1, 3, None, None, 5, 7], 3) == [2.0, None, 6.0]


def test_numbers_never_get_wider_than_their_column() -> None:
    assert [number(v) for v in (0.42, 12.5, 1234, 1e6, 1e300, None)] == [
        "0.42", "12.5", "1234", "1e6", "1e300", "-"]
    assert all(len(number(v)) <= 5 for v in (0.0, 9.999, 99.99, 99_999.4, 1e6, 1e308))
    assert [percent(v) for v in (0, 0.5, 1, 7, -1, None)] == ["0%", "50%", "100%", "100%",
                                                              "0%", "-"]


def test_sort_keys_biggest_first_unknown_last_and_s_cycles() -> None:
    nodes = [node(1), node(3), node(2, latest=None, heartbeat_age=None)]
    assert [n.id for n in sort_nodes(nodes, "name")] == ["node-01", "node-02", "node-03"]
    assert [n.id for n in sort_nodes(nodes, "load")] == ["node-03", "node-01", "node-02"]
    assert [n.id for n in sort_nodes(nodes, "age")] == ["node-02", "node-03", "node-01"]
    assert sort_nodes(nodes, "gpu")[-1].id == "node-02"
    assert [next_sort(k) for k in SORT_KEYS] == [*SORT_KEYS[1:], SORT_KEYS[0]]
    with pytest.raises(ValueError, match="unknown sort key"):
        sort_nodes(nodes, "cpu")


def test_history_gaps_are_kept_up_to_now() -> None:
    samples = [MetricSample(at=100.0, load1=1.0), MetricSample(at=115.0, load1=2.0)]
    out = with_gaps(samples, 5.0, now=132.0, most=100)
    assert [s.at for s in out] == [100, 105, 110, 115, 120, 125]
    assert [s.load1 for s in out] == [1.0, None, None, 2.0, None, None]
    assert len(with_gaps(samples, 5.0, now=10_000.0, most=10)) == 10
    jitter = [MetricSample(at=100.0, load1=1.0), MetricSample(at=110.0, load1=2.0)]
    assert with_gaps(jitter, 5.0, now=119.0, most=100) == tuple(jitter)


def test_a_heartbeat_dict_becomes_a_checked_sample() -> None:
    sample = sample_of({"load": [HOSTILE], "mem_total": 1e40, "mem_available": 5,
                        "gpu": {"gpus": [{"utilization_pct": 30}, HOSTILE]},
                        "jobs_running": True}, NOW)
    assert (sample.load1, sample.mem_total, sample.jobs_running) == (None, None, None)
    assert sample.gpu_util == (30.0,)
    # JSON integers have no bound; a float does: that value is unknown, no exception.
    assert sample_of({"load": [10**400], "mem_total": 1}, NOW) == MetricSample(
        at=NOW, mem_total=1.0)


# ------------------------------------------------------------------------- the frame


@pytest.mark.parametrize("width", [200, 120, 80, 60, 40, 30, 20])
def test_the_frame_fits_any_width_and_24_lines(width: int) -> None:
    text = frame_text(picture(40), width=width, height=24, sort="load")
    lines = text.splitlines()
    assert len(lines) == 24
    assert all(len(line) <= width for line in lines)
    assert lines[-1].startswith("+") and "more" in lines[-1]
    shown = [line.split()[0] for line in lines if line.startswith("node-")]
    assert len(shown) + int(lines[-1].split()[0][1:]) == 40
    assert shown[0] == "node-39"  # load sort: the busiest on top


def test_narrow_frames_drop_columns_wide_ones_grow_the_sparklines() -> None:
    wide = frame_text(picture(3), width=200, height=24).splitlines()
    narrow = frame_text(picture(3), width=40, height=24).splitlines()
    assert "version" in wide[1] and "gmem" in wide[1] and "trend" in wide[1]
    assert "version" not in narrow[1] and narrow[1].split()[:3] == ["node", "state", "age"]
    row = next(line for line in wide if line.startswith("node-02"))
    assert sum(ch in "▁▂▃▄▅▆▇█" for ch in row) >= 40  # two sparklines of 20+ cells
    assert "0123456" in row and "50%" in row and "60%" in row  # gpu util, disk used


def test_all_nodes_fit_when_there_is_room() -> None:
    lines = frame_text(picture(5), width=80, height=24).splitlines()
    assert len(lines) == 2 + 5 and not any("more" in line for line in lines)
    assert len(frame_text(picture(60), width=80, height=None).splitlines()) == 62


def test_hostile_text_is_shown_never_obeyed() -> None:
    bad = ClusterPicture(at=NOW, source="registry", problem=f"registry down: {HOSTILE}",
                         nodes=(node(1, code_version=HOSTILE),
                                node(2, latest=None, history=(), error=HOSTILE)))
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=200,
                      height=24)
    console.print(frame(bad, width=200, height=24))
    rendered = out.getvalue()
    # The node's escapes arrive as visible text; Rich's own styles are the only escapes.
    assert "\x1b[2J" not in rendered and "\x1b]0;" not in rendered and "\x07" not in rendered
    assert "\\x1b[2J" in rendered and "\\x1b]0;owned\\x07" in rendered
    assert "[red]x[/red]" in rendered and "[link=http://e]y" in rendered
    assert "\x1b]8;" not in rendered  # no hyperlink made from a row


def test_table_rows_for_plain_and_tsv() -> None:
    rows = table_rows(picture(2), "name")
    assert rows[0][:5] == ["node-00", "running", "0s", "0.00", "50%"]
    assert rows[1][5:9] == ["60%", "25%", "75%", "1"]


# --------------------------------------------------------------------- keys and the loop


def test_key_mode_restores_the_terminal_on_an_exception() -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "r", closefd=False) as stream:
            before = termios.tcgetattr(slave)
            with pytest.raises(RuntimeError), top.key_mode(stream) as fd:
                assert fd == slave
                lflag = termios.tcgetattr(slave)[3]
                assert not lflag & termios.ICANON and not lflag & termios.ECHO
                assert lflag & termios.ISIG  # Ctrl-C is still SIGINT
                raise RuntimeError("boom")
            assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
    with top.key_mode(io.StringIO()) as none:
        assert none is None


def _live(keys: list[bytes], *, stop_with_cancel: bool = False) -> tuple[str, list[str]]:
    """run_live on a real pseudo-terminal's stdin; `keys` typed one by one, 0.3 s apart."""
    master, slave = pty.openpty()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, height=24)
    sorts: list[str] = []
    calls = [0]

    def source() -> ClusterPicture:
        calls[0] += 1
        return picture(3)

    def typist() -> None:
        for key in keys:
            time.sleep(0.3)
            os.write(master, key)
        if stop_with_cancel:
            time.sleep(0.3)
            cancel.cancel()

    thread = threading.Thread(target=typist, daemon=True)
    try:
        with os.fdopen(slave, "r", closefd=False) as stdin:
            thread.start()
            top.run_live(source, interval=0.2, sort="name", console=console, stdin=stdin)
            sorts = [k for k in SORT_KEYS if f"sort {k} " in out.getvalue()]
            lflag = termios.tcgetattr(slave)[3]
            assert lflag & termios.ICANON and lflag & termios.ECHO
    finally:
        thread.join(5)
        cancel.reset()
        os.close(master)
        os.close(slave)
    assert calls[0] >= 1
    return out.getvalue(), sorts


def test_live_loop_s_changes_the_sort_and_q_quits() -> None:
    text, sorts = _live([b"s", b"\x1bOQ", b"ss", b"q"])  # F2 (ESC O Q) is no key of ours
    assert sorts == ["name", "load", "gpu"]
    assert "(q quit, s sort)" in text


def test_live_loop_ends_on_cancel() -> None:
    text, _ = _live([], stop_with_cancel=True)
    assert "node-01" in text


def test_json_needs_once() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["cluster", "top", "--json"])
    assert exc.value.code == 2


def test_once_with_a_dead_registry_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SKELETON_DATABASE_URL", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text("registry:\n  dsn: host=127.0.0.1 port=1 dbname=x user=x\n"
                      "  connect_timeout: 2\n")
    with pytest.raises(SystemExit) as exc:
        main(["cluster", "top", "--once", "--json", "--config", str(config)])
    assert exc.value.code == 3
    assert "127.0.0.1:1" in capsys.readouterr().err
