"""The LLM hook against a real HTTP chat-completions server on loopback, started by the test."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from report_bbox import (
    FakeReportWriter,
    OpenAIChatReportWriter,
    Report,
    ReportRequest,
    ReportWriter,
    ReportWriterError,
)

VALID = {
    "shape": "punctate",
    "lesion_location": "within the lumen of a hollow organ",
    "organ": "gallbladder",
    "size": [8, 7, 7.5],
    "relationship_with_surrounding_organs": "no close relationship with surrounding organs",
    "surface_characteristics": "well-defined margin",
    "specific_features": "stone",
    "enhancement_status": "non-contrast CT",
    "density": "hyperdense",
    "density_variations": "homogeneous",
}


class ChatServer:
    """A chat-completions endpoint answering from a script of (status, content) steps."""

    def __init__(self, script, *, reject_response_format=False, delay_s=0.0):
        self.script = list(script)
        self.requests = []
        self.headers = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.headers.append(dict(self.headers))
                if delay_s:
                    time.sleep(delay_s)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if reject_response_format and "response_format" in body:
                    return self._send(
                        400, {"error": {"message": "response_format is not supported"}}
                    )
                content = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                self._send(
                    200,
                    {
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": content}}
                        ]
                    },
                )

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def writer(server, **kw):
    return OpenAIChatReportWriter(base_url=server.base_url, model="test-model", timeout_s=5, **kw)


def test_malformed_answer_is_recovered_with_feedback():
    with ChatServer(["Sure! Here is the report: {shape: punctate", json.dumps(VALID)]) as server:
        report = writer(server, api_key="k-123").write(ReportRequest(lesion_type="gallstone"))
    assert (
        isinstance(report, Report)
        and report.density == "hyperdense"
        and report.lesion_type == "gallstone"
    )
    assert len(server.requests) == 2
    first, second = server.requests
    assert first["model"] == "test-model" and first["response_format"]["type"] == "json_schema"
    props = first["response_format"]["json_schema"]["schema"]["properties"]
    assert props["density"]["enum"] and "lesion_type" not in props
    assert "urinary_bladder" in first["messages"][0]["content"]
    feedback = second["messages"][-1]["content"]
    assert (
        second["messages"][-2]["role"] == "assistant"
        and "invalid" in feedback
        and "JSON" in feedback
    )
    assert server.headers[0]["Authorization"] == "Bearer k-123"


def test_vocabulary_error_fed_back_then_fixed():
    bad = {**VALID, "density": "hyperdens"}
    with ChatServer([json.dumps(bad), "```json\n" + json.dumps(VALID) + "\n```"]) as server:
        report = writer(server).write(ReportRequest(organ="gallbladder"))
    assert report.density == "hyperdense"
    assert "did you mean 'hyperdense'" in server.requests[1]["messages"][-1]["content"]


def test_untrusted_size_rejected():
    huge = {**VALID, "size": [90, 90, 90]}
    with ChatServer([json.dumps(huge), json.dumps(VALID)]) as server:
        report = writer(server).write(ReportRequest(lesion_type="gallstone"))
    assert max(report.size) < 25
    assert "does not fit" in server.requests[1]["messages"][-1]["content"]


def test_fallback_when_server_rejects_response_format():
    with ChatServer([json.dumps(VALID)], reject_response_format=True) as server:
        report = writer(server).write(ReportRequest(lesion_type="gallstone"))
    assert report.organ == "gallbladder"
    assert "response_format" in server.requests[0] and "response_format" not in server.requests[-1]


def test_fixed_values_override_answer():
    with ChatServer([json.dumps(VALID)]) as server:
        report = writer(server).write(
            ReportRequest(lesion_type="gallstone", fixed={"size": "12 mm"})
        )
    assert report.size == (12.0, 12.0, 12.0)
    assert "12" in server.requests[0]["messages"][1]["content"]


def test_never_valid_server_gives_clear_error_after_budget():
    with ChatServer([json.dumps({**VALID, "density": "purple"})]) as server:
        with pytest.raises(ReportWriterError) as info:
            writer(server, max_attempts=3).write(ReportRequest(lesion_type="gallstone"))
    assert len(server.requests) == 3
    msg = str(info.value)
    assert "after 3 attempts" in msg and "purple" in msg and "density" in msg


def test_silent_server_times_out_within_bound():
    with ChatServer([json.dumps(VALID)], delay_s=3.0) as server:
        w = OpenAIChatReportWriter(
            base_url=server.base_url, model="m", timeout_s=0.3, max_attempts=2
        )
        t0 = time.monotonic()
        with pytest.raises(ReportWriterError, match="after 2 attempts"):
            w.write(ReportRequest(lesion_type="gallstone"))
        assert time.monotonic() - t0 < 2.5


def test_http_error_is_reported():
    with ChatServer([json.dumps(VALID)]) as server:
        w = OpenAIChatReportWriter(
            base_url=server.base_url + "/wrong", model="m", max_attempts=1, timeout_s=5
        )
        with pytest.raises(ReportWriterError, match="HTTP 404"):
            w.write(ReportRequest())


def test_configuration_from_environment(monkeypatch):
    monkeypatch.delenv("REPORT_BBOX_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ReportWriterError, match="REPORT_BBOX_LLM_BASE_URL"):
        OpenAIChatReportWriter(model="m")
    monkeypatch.setenv("REPORT_BBOX_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("REPORT_BBOX_LLM_MODEL", "env-model")
    w = OpenAIChatReportWriter()
    assert w.model == "env-model" and w.url == "http://127.0.0.1:9/v1/chat/completions"


def test_fake_writer_is_a_report_writer():
    fake = FakeReportWriter(answers=[VALID], rng=np.random.default_rng(0))
    assert isinstance(fake, ReportWriter)
    assert fake.write(ReportRequest(lesion_type="gallstone")).specific_features == "stone"
    sampled = fake.write(ReportRequest(lesion_type="kidney_cyst"))
    assert sampled.lesion_type == "kidney_cyst"
    with pytest.raises(ReportWriterError):
        FakeReportWriter(answers=[{**VALID, "organ": "liver"}]).write(
            ReportRequest(lesion_type="gallstone")
        )


class TrickleServer:
    """A loopback HTTP server that sends its answer one byte at a time, ``gap_s`` apart.

    Each byte arrives well inside any socket timeout, so only a deadline on the whole call stops
    it. ``headers_too`` trickles the status line and headers as well as the body.
    """

    def __init__(self, *, gap_s, headers_too=False):
        self.gap_s = gap_s
        self.headers_too = headers_too
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.bytes_sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        body = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": json.dumps(VALID)}}]}
        ).encode()
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with conn:
            conn.settimeout(5)
            try:
                received = b""
                while b"\r\n\r\n" not in received:
                    received += conn.recv(65536)
                if not self.headers_too:
                    conn.sendall(head)
                for byte in (head if self.headers_too else b"") + body:
                    if self.stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    self.bytes_sent += 1
                    time.sleep(self.gap_s)
            except OSError:
                return  # the client hung up: what the deadline is for

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_trickling_server_is_cut_off_at_the_deadline(headers_too):
    # One byte every 50 ms: a ~700-byte answer would take ~35 s, each read waits only 50 ms.
    with TrickleServer(gap_s=0.05, headers_too=headers_too) as server:
        w = OpenAIChatReportWriter(
            base_url=server.base_url, model="m", timeout_s=1.0, max_attempts=1
        )
        t0 = time.monotonic()
        with pytest.raises(ReportWriterError, match=r"within timeout_s=1 s"):
            w.write(ReportRequest(lesion_type="gallstone"))
        elapsed = time.monotonic() - t0
        assert server.bytes_sent > 5  # the server really was trickling, not silent
    assert 0.9 < elapsed < 2.0


def test_deadline_covers_all_bytes_of_each_attempt():
    # Two attempts against a trickling server: each is cut at its own deadline.
    with TrickleServer(gap_s=0.05) as server:
        w = OpenAIChatReportWriter(
            base_url=server.base_url, model="m", timeout_s=0.5, max_attempts=2
        )
        t0 = time.monotonic()
        with pytest.raises(ReportWriterError, match="after 2 attempts"):
            w.write(ReportRequest(lesion_type="gallstone"))
        assert 0.9 < time.monotonic() - t0 < 2.0


def test_slow_answer_inside_the_deadline_is_accepted():
    # A trickled answer that completes before the deadline is a valid answer.
    with TrickleServer(gap_s=0.0005) as server:
        w = OpenAIChatReportWriter(
            base_url=server.base_url, model="m", timeout_s=10, max_attempts=1
        )
        report = w.write(ReportRequest(lesion_type="gallstone"))
    assert report.specific_features == "stone"
