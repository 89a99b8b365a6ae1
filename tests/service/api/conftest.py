"""The console's browser tests need Chromium and the `playwright` package: find them, and say
loudly at the end of the run when they were missing (the tests are skipped then)."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """OPENGALLERY_CHROMIUM, else the first Chromium on PATH (Debian: `apt-get install
    chromium`)."""
    configured = os.environ.get("OPENGALLERY_CHROMIUM")
    if configured:
        return configured if os.path.exists(configured) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the Python package 'playwright' is not installed")
    if find_chromium() is None:
        missing.append(
            "no Chromium found (apt-get install -y chromium, or set OPENGALLERY_CHROMIUM)"
        )
    return "; ".join(missing) or None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    browser_skips = [r for r in skipped if "test_console_browser" in str(r.nodeid)]
    reason = browser_missing()
    if browser_skips and reason:
        terminalreporter.write_sep("!", "CONSOLE BROWSER TESTS SKIPPED", red=True, bold=True)
        terminalreporter.write_line(
            f"{len(browser_skips)} browser tests of the operator console did not run: {reason}.",
            red=True,
            bold=True,
        )
        terminalreporter.write_sep("!", red=True, bold=True)
