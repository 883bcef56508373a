"""quiet_stdout silences the calling thread only (pycocotools' prints in eval.async's
worker must not swallow the training thread's output)."""

import sys
import threading

from detector.utils.quiet import quiet_stdout


def test_only_the_quiet_thread_is_silenced(capsys):
    original = sys.stdout
    inside, release = threading.Event(), threading.Event()

    def worker():
        with quiet_stdout():
            print("from the worker")
            inside.set()
            release.wait(5)
            print("from the worker again")

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(5)
    print("from the main thread")  # while the worker is inside its block
    release.set()
    thread.join(5)
    with quiet_stdout():
        print("main, quiet")
        with quiet_stdout():  # nested
            print("main, nested")
        print("main, still quiet")
    print("main, loud again")
    assert sys.stdout is original
    out = capsys.readouterr().out
    assert out == "from the main thread\nmain, loud again\n"


def test_a_stream_replaced_meanwhile_is_left_alone(capsys):
    import io

    replacement = io.StringIO()
    with quiet_stdout():
        sys.stdout = replacement
    try:
        assert sys.stdout is replacement
    finally:
        sys.stdout = sys.__stdout__
