"""TensorFlow's native start-up lines: the known ones held back and said in words, any
other line passed through (nothing unexpected is hidden)."""

import os

from detector.utils import native_log

KNOWN_LINE = (
    "I0000 00:00:1796687752.101599   18733 cudart_stub.cc:31] Could not find cuda drivers "
    "on your machine, GPU will not be used."
)
CUINIT = (
    "E0000 00:00:1796687760.443196   18733 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"
)


def test_known_lines_are_held_and_others_pass_through(monkeypatch, capfd):
    monkeypatch.delenv(native_log.VERBOSE_ENV, raising=False)
    monkeypatch.setattr(native_log, "_held", [])
    with native_log.hold_native_stderr():
        os.write(2, f"{KNOWN_LINE}\nsomething else went wrong\n{CUINIT}\n".encode())
    assert native_log.held() == [KNOWN_LINE, CUINIT]
    assert capfd.readouterr().err == "something else went wrong\n"
    assert native_log.notes() == ["no CUDA driver", "no CUDA device"]


def test_verbose_holds_nothing(monkeypatch, capfd):
    monkeypatch.setenv(native_log.VERBOSE_ENV, "1")
    monkeypatch.setattr(native_log, "_held", [])
    with native_log.hold_native_stderr():
        os.write(2, f"{KNOWN_LINE}\n".encode())
    assert native_log.held() == []
    assert capfd.readouterr().err == f"{KNOWN_LINE}\n"


def test_notes_say_each_meaning_once_and_skip_the_silent_ones():
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 port.cc:153] oneDNN custom operations are on. You may see slightly different",
        "I0000 port.cc:153] oneDNN custom operations are on. You may see slightly different",
    ]
    assert native_log.notes(lines) == ["oneDNN on"]
