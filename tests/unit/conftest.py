"""Unit tests: the pure core, the lab's pure helpers, and libvirt's test:///default driver."""

from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from the code")


@pytest.fixture
def golden(request):
    """Compare text with tests/unit/golden/NAME, or rewrite it with --update-golden."""
    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if request.config.getoption("--update-golden") or not path.exists():
            path.write_text(text)
            if not request.config.getoption("--update-golden"):
                pytest.fail(f"golden file {name} was missing and has been written; review and commit it")
        assert text == path.read_text(), f"output differs from golden/{name} (rerun with --update-golden)"
    return check
