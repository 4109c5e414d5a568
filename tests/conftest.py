"""Settings shared by every test module."""

import signal


def pytest_configure(config):
    # A shell starts background jobs (`pytest &`) with SIGINT ignored, and Python then never
    # raises KeyboardInterrupt. The Ctrl-C tests of the rater need Python's default handler.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
