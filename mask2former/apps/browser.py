"""The web demo in a real browser: Debian's Chromium driven by Playwright.

Used by the web demo's browser test and by ``tools/web_demo_screenshot.py``. Playwright's own
browser download is not needed: the Chromium of the system (``apt-get install chromium``) is
launched headless, with the background services that would reach out to the network off, and
a fresh profile.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator, List, Optional, Sequence

__all__ = [
    "CHROMIUM_FLAGS",
    "CHROMIUM_INSTALL_HINT",
    "find_chromium",
    "free_port",
    "launch_chromium",
    "running_web_demo",
    "upload",
    "wait_for_status",
]

CHROMIUM_INSTALL_HINT = (
    "Chromium is not installed: run `apt-get install -y chromium` as root (`make test` does "
    "when it can); Playwright drives that browser."
)
# Headless, without a sandbox (containers run as root), GPU or the background services
# (updates, sync, safe-browsing lists, ...) that would otherwise flood a closed network.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
_CHROMIUM_NAMES = ("chromium", "chromium-browser")


def find_chromium() -> Optional[str]:
    """The path of the system's Chromium (``/usr/bin/chromium`` on Debian), or None."""
    for name in _CHROMIUM_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def launch_chromium(playwright, profile_dir: str, **context_options):
    """A headless Chromium context with a fresh profile in ``profile_dir``.

    Args:
        playwright: the object ``playwright.sync_api.sync_playwright()`` starts.
        profile_dir: an empty folder for the browser's profile.
        context_options: for ``launch_persistent_context`` (viewport, accept_downloads, ...).

    Raises:
        FileNotFoundError: Chromium is not installed (the message says how to install it).
    """
    executable = find_chromium()
    if executable is None:
        raise FileNotFoundError(CHROMIUM_INSTALL_HINT)
    return playwright.chromium.launch_persistent_context(
        profile_dir,
        executable_path=executable,
        headless=True,
        args=list(CHROMIUM_FLAGS),
        **context_options,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_web_demo(
    app_script: str,
    arguments: Sequence[str],
    *,
    log_path: str,
    timeout: float = 180.0,
    env: Optional[dict] = None,
) -> Iterator[str]:
    """Run ``python APP_SCRIPT --port PORT ARGUMENTS`` until the block ends; yields its URL.

    Args:
        app_script: demo/app.py.
        arguments: its other arguments (``--opts ...`` last).
        log_path: where its output goes.
        timeout: seconds to wait for the page to answer.
        env: the environment (default: this process's).

    Raises:
        RuntimeError: the app exited or did not answer in time; the message holds its log.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command: List[str] = [sys.executable, app_script, "--port", str(port), *arguments]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env or dict(os.environ)
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the web demo exited ({process.returncode}):\n{_tail(log_path)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the web demo did not answer at {url} in {timeout:g} s:\n{_tail(log_path)}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: str, size: int = 4000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-size:]


def upload(page, component_id: str, path: str) -> None:
    """Put a file into the Gradio file component ``#component_id`` (clearing it first)."""
    clear = page.locator(f"#{component_id} button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.set_input_files(f"#{component_id} input[type=file]", path)


def wait_for_status(page, status_id: str, text: str, timeout_ms: float = 60_000) -> str:
    """Wait until the Markdown ``#status_id`` contains ``text``; return its text."""
    page.wait_for_function(
        "([id, text]) => (document.getElementById(id)?.innerText || '').includes(text)",
        arg=[status_id, text],
        timeout=timeout_ms,
    )
    return page.inner_text(f"#{status_id}")
