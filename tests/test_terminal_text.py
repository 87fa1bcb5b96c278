"""Untrusted text never reaches a terminal raw: the worker's strings, audited source, log records, CLI errors.

Each test checks concrete bytes: what the caller wrote to stderr, ``str()`` and ``repr()`` of what it got,
and the report the audit printed — no raw ESC, C1 or bidi/invisible character, the visible escape instead.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path

import pytest

from safeloader.cli import main as cli_main
from safeloader.display import printable
from safeloader.errors import RemoteError, WorkerCrashed
from safeloader.policy.schema import Policy, SandboxPolicy
from safeloader.proxy import RemoteObject, WorkerSession
from tests.fixtures.plain_worker import PlainWorker, spawn_plain_worker
from tests.hostile.terminal_worker import HOSTILE

TERMINAL_WORKER = str(Path(__file__).parent / "hostile" / "terminal_worker.py")
#: Characters that must never be written raw: ESC, BEL, C1 CSI, bidi controls, zero-width, BOM, a tag
#: character, the line separator.
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\u2066", "\u2069", "\u200b", "\ufeff", "\U000e0041", "\u2028")
#: What the caller shows instead.
ESCAPED = r"\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b31m\u202eevil\u2066x\u2069\u200b\ufeff\U000e0041\u2028end"


def assert_no_raw(text: str) -> None:
    found = [char for char in RAW if char in text]
    assert not found, f"raw control characters {found!r} in {text!r}"


def start_terminal_worker(mode: str, tmp_path: Path) -> WorkerSession:
    policy = dataclasses.replace(Policy(), sandbox=SandboxPolicy(load_timeout_s=30.0, call_timeout_s=20.0))

    def spawner(sandbox: SandboxPolicy, *, model_dir: Path) -> PlainWorker:
        return spawn_plain_worker(sandbox, model_dir=model_dir, argv=(TERMINAL_WORKER, mode, str(tmp_path / "m")))

    return WorkerSession.start(policy, model_dir=tmp_path, spawner=spawner)


# --- the one function ------------------------------------------------------------------------------


def test_printable_escapes_every_control_and_invisible_character() -> None:
    assert printable(HOSTILE) == ESCAPED
    assert printable("\x00\x7f\x85\u061c\u180e\u200f\u2029\u202a\U000e007f\u3164") == (
        r"\x00\x7f\x85\u061c\u180e\u200f\u2029\u202a\U000e007f\u3164"
    )
    # A lone surrogate cannot even be encoded for a terminal: it is escaped too.
    assert printable("a\ud800b") == r"a\ud800b"


def test_printable_keeps_only_what_the_format_needs() -> None:
    assert printable("a\nb\tc\rd") == r"a\nb\tc\rd"
    assert printable("a\nb\tc\rd", keep="\n\t") == "a\nb\tc\\rd"
    with pytest.raises(ValueError, match="only newlines and tabs"):
        printable("x", keep="\r")


def test_printable_leaves_ordinary_text_alone() -> None:
    text = "Ünïcödé — 日本語 ✓ 👍 C:\\path\\x1b (already visible)"
    assert printable(text) is text


# --- what the worker sends -------------------------------------------------------------------------


def test_hostile_progress_error_and_events_reach_the_caller_escaped(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    session = start_terminal_worker("error", tmp_path)
    try:
        with pytest.raises(RemoteError) as caught:
            session.get_attribute(0, "anything")
        error = caught.value
        stderr = capfd.readouterr().err
        assert "step " + ESCAPED in stderr  # the tqdm bar drew the description escaped
        assert_no_raw(stderr)
        for shown in (str(error), error.type_name, error.traceback_text, repr(error)):
            assert_no_raw(shown)
        assert error.type_name == "Value" + ESCAPED
        assert "bad " + ESCAPED in str(error)
        assert error.traceback_text == "Traceback (most recent call last):\n  line " + ESCAPED + "\n"
        # Programs can still read exactly what the worker sent.
        assert error.raw_type_name == "Value" + HOSTILE
        assert error.raw_message == "bad " + HOSTILE
        assert error.raw_traceback_text.endswith("  line " + HOSTILE + "\n")
        assert session.events == [{"event": "open " + ESCAPED, "detail": ESCAPED, "by": "pipeline"}]
    finally:
        session.close()


def test_hostile_type_name_is_escaped_in_repr(tmp_path: Path) -> None:
    session = start_terminal_worker("handle", tmp_path)
    try:
        kind, value = session.get_attribute(0, "component")
        assert kind == "value" and isinstance(value, RemoteObject)
        shown = repr(value)
        assert_no_raw(shown)
        assert shown.startswith("<RemoteObject T" + ESCAPED + " #5")
    finally:
        session.close()


def test_hostile_stderr_tail_is_escaped_in_worker_crashed(tmp_path: Path) -> None:
    session = start_terminal_worker("crash", tmp_path)
    with pytest.raises(WorkerCrashed) as caught:
        session.get_attribute(0, "anything")
    crashed = caught.value
    assert_no_raw(str(crashed))
    assert_no_raw(crashed.stderr_tail)
    one_line = ESCAPED.replace("\\u2028", "")
    assert "last stderr line: Fatal " + one_line + ")" in str(crashed)
    assert crashed.stderr_tail.endswith("Fatal " + one_line)
    assert crashed.raw_stderr_tail.endswith("Fatal " + HOSTILE.replace("\u2028", ""))


# --- log records and CLI errors --------------------------------------------------------------------


def test_log_records_are_escaped_for_every_handler() -> None:
    import safeloader  # noqa: F401  (attaches the filter)

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("safeloader")
    logger.addHandler(handler)
    try:
        logger.warning("unpinned load: %s", "org/" + HOSTILE)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "unpinned load: org/" + ESCAPED + "\n"


def test_cli_error_naming_a_hostile_path_is_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / ("pipe" + HOSTILE)
    assert cli_main(["audit", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("safeloader: error: ")
    assert "pipe" + ESCAPED in err
    assert_no_raw(err)


# --- the audit report and Trojan Source ------------------------------------------------------------

TROJAN_SOURCE = (
    "def is_admin(level):\n"
    '    if level != "user\u202e \u2066# admin only\u2069 \u2066":  # looks like a comment\n'
    "        return True\n"
    "    # clears the line on a terminal: \x1b[2K\n"
    "    return False\n"
)


@pytest.fixture(scope="module")
def trojan_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trojan")
    (root / "pipeline.py").write_text(TROJAN_SOURCE, encoding="utf-8")
    return root


def test_audit_text_report_escapes_source_and_flags_trojan_source(
    trojan_pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["audit", str(trojan_pipeline)]) == 1
    out = capsys.readouterr().out
    assert_no_raw(out)
    lines = out.splitlines()
    flagged = [line for line in lines if " HIGH SL960 " in line]
    assert [line.split()[0] for line in flagged] == ["2:22", "4:38"]
    assert "\\u202e RIGHT-TO-LEFT OVERRIDE" in flagged[0] and "[CWE-451]" in flagged[0]
    assert "\\x1b control character" in flagged[1]
    assert '        | if level != "user\\u202e \\u2066# admin only\\u2069 \\u2066":  # looks like a comment' in lines
    assert "        | # clears the line on a terminal: \\x1b[2K" in lines


def test_audit_json_and_sarif_stay_valid_and_carry_escaped_text(
    trojan_pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["audit", str(trojan_pipeline), "--format", "json"]) == 1
    out = capsys.readouterr().out
    assert out.isascii()  # every non-ASCII character is a JSON \u escape
    document = json.loads(out)
    findings = document["reports"][0]["findings"] if "reports" in document else document["findings"]
    sl960 = [finding for finding in findings if finding["rule_id"] == "SL960"]
    assert [finding["line"] for finding in sl960] == [2, 4]
    assert "\u202e" in sl960[0]["source_line"]  # the raw text, for programs, escaped by JSON itself
    assert sl960[0]["severity"] == "high" and sl960[0]["cwe"] == "CWE-451"

    assert cli_main(["audit", str(trojan_pipeline), "--format", "sarif"]) == 1
    out = capsys.readouterr().out
    assert out.isascii()
    sarif = json.loads(out)
    run = sarif["runs"][0]
    assert "SL960" in [rule["id"] for rule in run["tool"]["driver"]["rules"]]
    assert [
        result["locations"][0]["physicalLocation"]["region"]["startLine"]
        for result in run["results"]
        if result["ruleId"] == "SL960"
    ] == [2, 4]


def test_plain_ascii_source_is_not_flagged(tmp_path: Path) -> None:
    from safeloader.audit.rules.trojan_source import hidden_characters_in

    assert hidden_characters_in(b"x = 1\r\n\tif x:\f\n        pass  # caf\xc3\xa9 \xe2\x80\x94 ok\n") == []
    assert hidden_characters_in(b"a = 1\rb = '\xe2\x80\x8b'\n") == [(2, 5, "\\u200b ZERO WIDTH SPACE")]
