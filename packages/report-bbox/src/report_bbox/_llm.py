"""Report writers: a protocol, an OpenAI-compatible chat-completions client, and a fake for tests.

The LLM's answer is untrusted: it is parsed, validated as a :class:`Report` (closed vocabulary),
checked to fit the organ and the requested lesion type (:func:`check_report_fits`), and the user's
fixed values override it (as in LesionDiffusion's ``preprocess.py``). A failed answer is sent back
to the model with the validation error and the request retried, up to ``max_attempts`` calls.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ._lesion_types import LESION_TYPES, lesion_type_name
from ._report import LESION_ORGANS, Report, validate_organ
from ._sampling import check_report_fits, normalize_fixed, sample_report
from ._vocabulary import VOCABULARY
from .exceptions import ReportError, ReportWriterError

__all__ = [
    "FakeReportWriter",
    "OpenAIChatReportWriter",
    "ReportRequest",
    "ReportWriter",
]

logger = logging.getLogger(__name__)

ENV_BASE_URL = "REPORT_BBOX_LLM_BASE_URL"
ENV_MODEL = "REPORT_BBOX_LLM_MODEL"
ENV_API_KEY = "REPORT_BBOX_LLM_API_KEY"


@dataclass(frozen=True)
class ReportRequest:
    """What the caller wants a report for.

    Attributes:
        lesion_type: One of :data:`~report_bbox.LESION_TYPES` (aliases accepted), or None.
        organ: Organ name, or None.
        fixed: Attribute values the report must keep (they override the writer's answer).
        notes: Free-text wishes passed to an LLM ("a large lesion near the hilum").
    """

    lesion_type: str | None = None
    organ: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.lesion_type is not None:
            object.__setattr__(self, "lesion_type", lesion_type_name(self.lesion_type))
        if self.organ is not None:
            object.__setattr__(self, "organ", validate_organ(self.organ))
        object.__setattr__(self, "fixed", normalize_fixed(dict(self.fixed)))


@runtime_checkable
class ReportWriter(Protocol):
    """Anything that turns a :class:`ReportRequest` into a validated :class:`Report`."""

    def write(self, request: ReportRequest) -> Report:
        """Return a report satisfying the request, or raise ``ReportWriterError``."""
        ...


def _vet(report_data: dict[str, Any], request: ReportRequest) -> Report:
    """Validate an untrusted answer: vocabulary, fixed values, organ and lesion-type fit."""
    if not isinstance(report_data, dict):
        raise ReportError(f"the answer must be a JSON object, got {type(report_data).__name__}")
    # organ_type follows from the organ; the lesion type is the caller's, not the model's.
    data = {k: v for k, v in report_data.items() if k not in ("organ_type", "lesion_type")}
    data.update({k: (list(v) if k == "size" else v) for k, v in request.fixed.items()})
    if request.organ is not None:
        data["organ"] = request.organ
    if request.lesion_type is not None:
        data["lesion_type"] = request.lesion_type
    report = Report.from_dict(data)
    problems = check_report_fits(report, request.lesion_type)
    if problems:
        raise ReportError("the report does not fit: " + "; ".join(problems))
    return report


class FakeReportWriter:
    """A deterministic writer for tests: scripted answers, else :func:`sample_report`.

    Args:
        answers: Raw answers (dicts or JSON strings) returned in order and vetted like an LLM's;
            when exhausted, reports are sampled with ``rng``.
        rng: Generator for sampled reports.
    """

    def __init__(
        self,
        *,
        answers: Iterable[dict[str, Any] | str] = (),
        rng: np.random.Generator | None = None,
    ) -> None:
        self._answers = list(answers)
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self.requests: list[ReportRequest] = []

    def write(self, request: ReportRequest) -> Report:
        self.requests.append(request)
        if self._answers:
            answer = self._answers.pop(0)
            try:
                data = json.loads(answer) if isinstance(answer, str) else answer
                return _vet(data, request)
            except (ReportError, json.JSONDecodeError) as exc:
                raise ReportWriterError(f"fake answer rejected: {exc}") from exc
        try:
            return sample_report(
                self._rng, lesion_type=request.lesion_type, organ=request.organ, **request.fixed
            )
        except ReportError as exc:
            raise ReportWriterError(f"cannot write a report for {request}: {exc}") from exc


def _extract_json(text: str) -> dict[str, Any]:
    fenced = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text, flags=re.S)
    candidate = fenced.group(1) if fenced else None
    if candidate is None:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise ReportError("the answer holds no JSON object")
        candidate = text[start : end + 1]
    try:
        data = json.loads(candidate)
    except json.JSONDecodeError as exc:
        raise ReportError(f"the answer's JSON does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise ReportError("the answer's JSON is not an object")
    return data


def _answer_schema() -> dict[str, Any]:
    schema = Report.json_schema()
    schema["properties"].pop("lesion_type", None)
    schema["properties"].pop("organ_type", None)
    return schema


def _system_prompt() -> str:
    vocab = {k: list(v) for k, v in VOCABULARY.items() if k != "organ_type"}
    return (
        "You write structured CT lesion reports (LesionDiffusion template). Answer with ONE JSON "
        "object and nothing else. Keys: shape, lesion_location, organ, size, "
        "relationship_with_surrounding_organs, surface_characteristics, specific_features, "
        "enhancement_status, density, density_variations. 'size' is three numbers in millimetres "
        "[x, y, z]. Every other value must be one of these exact strings: "
        + json.dumps(vocab)
        + ". 'organ' is one of "
        + json.dumps(list(LESION_ORGANS))
        + ". Hollow organs take 'within the lumen of a hollow organ' or 'wall thickening'; "
        "parenchymal organs take 'within the parenchymal organ' or "
        "'protruding from the parenchymal organ'."
    )


def _user_prompt(request: ReportRequest) -> str:
    parts = []
    if request.lesion_type is not None:
        spec = LESION_TYPES[request.lesion_type]
        parts.append(
            f"Lesion type: {spec.name.replace('_', ' ')} in the {spec.organ.replace('_', ' ')}. "
            f"Largest diameter between {spec.size_mm[0]:g} and {spec.size_mm[1]:g} mm. "
            "Allowed values for this type: "
            + json.dumps({a: list(spec.allowed(a)) for a in VOCABULARY if a != "organ_type"})
        )
    if request.organ is not None:
        parts.append(f"Organ: {request.organ}.")
    if request.fixed:
        fixed = {k: (list(v) if k == "size" else v) for k, v in request.fixed.items()}
        parts.append("Keep these values: " + json.dumps(fixed))
    if request.notes:
        parts.append("Notes: " + request.notes)
    return "\n".join(parts) or "Write a plausible report for any lesion type."


class OpenAIChatReportWriter:
    """Report writer backed by any OpenAI-compatible ``/chat/completions`` endpoint.

    Configuration comes from the arguments, else the environment: ``REPORT_BBOX_LLM_BASE_URL``
    (e.g. ``http://127.0.0.1:8000/v1``; falls back to ``OPENAI_BASE_URL``),
    ``REPORT_BBOX_LLM_MODEL`` and ``REPORT_BBOX_LLM_API_KEY`` (falls back to ``OPENAI_API_KEY``;
    optional for local servers). Nothing is hard-coded to a provider.

    Args:
        base_url: API root; ``/chat/completions`` is appended.
        model: Model name sent to the server.
        api_key: Bearer token, or None for servers without authentication.
        structured_output: ``"auto"`` asks for JSON-schema output and falls back to plain text
            if the server rejects ``response_format``; ``"json_schema"`` always asks; ``"none"``
            never asks (JSON is parsed from the text).
        max_attempts: Total chat calls per report (answers that fail validation and transport
            errors both count).
        timeout_s: Deadline of each chat call in seconds, from connecting to the last byte of
            the answer (a server that trickles bytes is cut off when it passes, not when one
            read stalls); :meth:`write` thus returns within about ``max_attempts * timeout_s``.
        temperature: Sampling temperature sent to the server.
        max_tokens: Answer length limit sent to the server.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        structured_output: Literal["auto", "json_schema", "none"] = "auto",
        max_attempts: int = 3,
        timeout_s: float = 30.0,
        temperature: float = 0.7,
        max_tokens: int = 600,
    ) -> None:
        base_url = base_url or os.environ.get(ENV_BASE_URL) or os.environ.get("OPENAI_BASE_URL")
        model = model or os.environ.get(ENV_MODEL)
        if not base_url:
            raise ReportWriterError(f"no LLM endpoint: pass base_url= or set {ENV_BASE_URL}")
        if not re.match(r"https?://", base_url):
            raise ReportWriterError(
                f"base_url must start with http:// or https://, got {base_url!r}"
            )
        if not model:
            raise ReportWriterError(f"no LLM model: pass model= or set {ENV_MODEL}")
        if structured_output not in ("auto", "json_schema", "none"):
            raise ReportWriterError(
                f"structured_output must be 'auto', 'json_schema' or 'none', got {structured_output!r}"
            )
        if max_attempts < 1 or not timeout_s > 0:
            raise ReportWriterError("max_attempts must be >= 1 and timeout_s > 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key or os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY")
        self.structured_output = structured_output
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._use_schema = structured_output != "none"

    def _post(self, messages: list[dict[str, str]], deadline: float | None = None) -> str:
        """One chat call, cut off at ``deadline`` (``time.monotonic()`` seconds)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout_s
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self._use_schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "lesion_report", "schema": _answer_schema()},
            }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _TransportError(
                f"no answer from {self.url} within timeout_s={self.timeout_s:g} s"
            )
        watchdog = _Watchdog()
        timer = threading.Timer(remaining, watchdog.expire)
        timer.daemon = True
        timer.start()
        try:
            opener = urllib.request.build_opener(
                _DeadlineHTTPHandler(watchdog), _DeadlineHTTPSHandler(watchdog)
            )
            with opener.open(req, timeout=remaining) as resp:
                raw = resp.read()
            if watchdog.expired:
                raise TimeoutError("deadline passed")
            payload = json.loads(raw.decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500] if not watchdog.expired else ""
            if (
                exc.code in (400, 422)
                and self._use_schema
                and self.structured_output == "auto"
                and "response_format" in detail
            ):
                logger.info("server rejected response_format; falling back to JSON in text")
                self._use_schema = False
                return self._post(messages, deadline)
            raise _TransportError(f"HTTP {exc.code} from {self.url}: {detail}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if watchdog.expired:
                raise _TransportError(
                    f"no complete answer from {self.url} within timeout_s={self.timeout_s:g} s"
                ) from None
            raise _TransportError(f"cannot reach {self.url}: {exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _TransportError(f"{self.url} did not answer JSON: {exc}") from None
        finally:
            timer.cancel()
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _TransportError(
                f"{self.url} answered without choices[0].message.content"
            ) from None
        if not isinstance(content, str):
            raise _TransportError("choices[0].message.content is not a string")
        return content

    def write(self, request: ReportRequest) -> Report:
        """Ask the model, vet the answer, feed errors back; at most ``max_attempts`` calls.

        Raises:
            ReportWriterError: No valid report after ``max_attempts`` calls; the message holds
                the last error.
        """
        messages = [
            {"role": "system", "content": _system_prompt()},
            {"role": "user", "content": _user_prompt(request)},
        ]
        last = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            try:
                content = self._post(messages)
            except _TransportError as exc:
                last = str(exc)
                logger.warning("LLM call %d/%d failed: %s", attempt, self.max_attempts, last)
                continue
            try:
                return _vet(_extract_json(content), request)
            except ReportError as exc:
                last = f"invalid answer: {exc}"
                logger.info("LLM answer %d/%d rejected: %s", attempt, self.max_attempts, exc)
                messages.append({"role": "assistant", "content": content})
                messages.append(
                    {
                        "role": "user",
                        "content": f"That answer is invalid: {exc}. Reply with the corrected "
                        "JSON object only.",
                    }
                )
        raise ReportWriterError(
            f"no valid report from {self.url} (model {self.model!r}) after {self.max_attempts} "
            f"attempts; last error: {last}"
        )


class _TransportError(Exception):
    """An HTTP-level failure (counted against the attempt budget)."""


class _Watchdog:
    """Shuts down the sockets of one chat call when its deadline passes.

    A socket timeout bounds each read, so a server sending one byte per second would hold the
    call forever; shutting the socket down from a timer makes the blocked read return at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.expired = False

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _watched(cls: type[http.client.HTTPConnection], watchdog: _Watchdog) -> Any:
    """A connection factory for ``cls`` whose sockets are registered with ``watchdog``."""

    def create_connection(*args: Any, **kwargs: Any) -> socket.socket:
        sock = socket.create_connection(*args, **kwargs)
        watchdog.register(sock)
        return sock

    def factory(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        conn = cls(*args, **kwargs)
        conn._create_connection = create_connection  # type: ignore[attr-defined]
        return conn

    return factory


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(http.client.HTTPConnection, self._watchdog), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            _watched(http.client.HTTPSConnection, self._watchdog),
            req,
            context=self._context,
        )
