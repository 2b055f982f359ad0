"""Markers of the test suite (the defaults the tests run with are in the top-level conftest.py)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "browser: opens the built book in headless Chromium (tests/test_browser.py); "
        "deselect with -m 'not browser'")
