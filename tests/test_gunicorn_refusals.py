"""The adapter that answers gunicorn's own refusals (web/gunicorn_refusals.py), without a server.

tests/test_gunicorn.py sends the same refusals to a real gunicorn over raw sockets.
"""
import inspect
import json

import gunicorn.http.wsgi
import gunicorn.util
import gunicorn.workers.base

from web import gunicorn_refusals


def test_the_reason_matches_the_status():
    assert gunicorn_refusals.reason_for(501, "Bad Request") == "Not Implemented"
    assert gunicorn_refusals.reason_for(500, "Bad Request") == "Internal Server Error"
    assert gunicorn_refusals.reason_for(400, "Bad Request") == "Bad Request"
    assert gunicorn_refusals.reason_for(414, "URI Too Long") == "URI Too Long"


def test_an_answer_is_the_envelope_with_a_request_id():
    head, _, body = gunicorn_refusals.refusal(501, "Bad Request",
                                              request_id="ab" * 16).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 501 Not Implemented"
    assert "X-Request-ID: " + "ab" * 16 in lines
    assert "Connection: close" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == {"message": "Not Implemented.", "error": "not_implemented"}


def test_install_replaces_gunicorns_writer(monkeypatch):
    monkeypatch.setattr(gunicorn.util, "write_error", gunicorn.util.write_error)
    gunicorn_refusals.install()
    written = []
    monkeypatch.setattr(gunicorn.util, "write_nonblock", lambda _sock, data: written.append(data))
    gunicorn.util.write_error(None, 431, "Request Header Fields Too Large", "echo of the request")
    assert written and b"echo of the request" not in written[0]
    assert b"X-Request-ID: " in written[0]


def test_install_names_the_product_in_gunicorns_server_header(monkeypatch):
    monkeypatch.setattr(gunicorn.util, "write_error", gunicorn.util.write_error)
    monkeypatch.setattr(gunicorn.http.wsgi, "SERVER", gunicorn.http.wsgi.SERVER)
    gunicorn_refusals.install()
    assert gunicorn.http.wsgi.SERVER == "security-api"
    assert b"Server: security-api\r\n" in gunicorn_refusals.refusal(400, "Bad Request")


def test_gunicorn_still_goes_through_the_names_we_patch():
    # An upgrade that binds these names elsewhere would silently undo the patches.
    assert inspect.signature(gunicorn.util.write_error).parameters.keys() == \
        {"sock", "status_int", "reason", "mesg"}
    assert "util.write_error(" in inspect.getsource(gunicorn.workers.base.Worker)
    assert "self.version = SERVER" in inspect.getsource(gunicorn.http.wsgi.Response)
