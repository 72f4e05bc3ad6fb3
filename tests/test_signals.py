"""The shared stop-signal handling (skor_bridge.signals), fast and without services: the
end-to-end proofs are tests/test_lifecycle.py (bridge) and tests/test_relay.py (relay)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading


def test_the_first_signal_asks_for_a_drain_and_a_repeated_sigterm_changes_nothing():
    from skor_bridge.signals import handle_stop_signals

    stopping = threading.Event()
    calls = []

    def request_stop():
        calls.append(1)
        stopping.set()

    def embedder(signum, frame):
        pass

    saved = signal.signal(signal.SIGTERM, embedder), signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        restore = handle_stop_signals(stopping, request_stop)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert calls == [1] and stopping.is_set()
        restore()
        # An embedding program's own handler comes back; a default one does not (a signal
        # arriving while the process exits would kill it instead of being noted)
        assert signal.getsignal(signal.SIGTERM) is embedder
        assert signal.getsignal(signal.SIGINT) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])


def test_handlers_are_left_alone_outside_the_main_thread():
    from skor_bridge.signals import handle_stop_signals

    before = signal.getsignal(signal.SIGINT)
    result = []
    thread = threading.Thread(
        target=lambda: result.append(handle_stop_signals(threading.Event(), lambda: None))
    )
    thread.start()
    thread.join()
    result[0]()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_exits_at_once_with_code_1():
    script = textwrap.dedent("""
        import os, signal, threading, time
        from skor_bridge.signals import handle_stop_signals
        stopping = threading.Event()
        handle_stop_signals(stopping, stopping.set)
        os.kill(os.getpid(), signal.SIGINT)
        assert stopping.is_set()
        os.kill(os.getpid(), signal.SIGTERM)  # repeated SIGTERM: still draining
        print("draining", flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)
        print("not reached", flush=True)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stdout == "draining\n"
