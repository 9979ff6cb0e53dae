"""The modules split off by job keep their place in the layering: reading input does not pull
in the request context (flask_api_functions), and the domain's new modules never import Flask.
A fresh interpreter per module, so what another test imported cannot hide a cycle."""
import subprocess
import sys

import pytest


def _imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return set(result.stdout.split())


def test_input_reading_needs_no_request_context():
    loaded = _imported_after("web.api.inputs")
    assert "web.api.inputs" in loaded
    assert not {"flask_api", "flask_api_functions"} & loaded


@pytest.mark.parametrize("module", [
    "security_api.accounts.signin_attempts", "security_api.accounts.signin",
    "security_api.integrations.notify", "security_api.integrations.notify_channels",
    "security_api.integrations.notify_texts"])
def test_split_domain_modules_never_import_flask(module):
    loaded = _imported_after(module)
    assert module in loaded
    assert "flask" not in loaded
