"""A small HTTP client of the service's REST API, for the command line (stdlib only).

:class:`ServiceClient` sends JSON requests with the bearer token and turns every error
response into a :class:`ServiceClientError` whose message lists the API's per-field
errors, so a command can print it as it is.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from api.errors import ServiceError

FINISHED_JOB_STATUSES = ("succeeded", "failed", "cancelled")
"""A job in one of these statuses runs no more trials (until resumed)."""


class ServiceClientError(ServiceError, RuntimeError):
    """The service could not be reached, or refused a request (the message has its errors)."""


class ServiceClient:
    """JSON requests to one service.

    Args:
        base_url: ``http://host:port`` of the service.
        token: Bearer token, or None when the service needs none.
        timeout_s: Per-request timeout.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def request(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        """One request to ``path`` (e.g. ``/api/jobs``); returns (status, decoded body).

        Raises:
            ServiceClientError: The service is unreachable or answered with an error status.
        """
        url = f"{self.base_url}{path}"
        data = None if body is None else json.dumps(body).encode()
        all_headers = {"Accept": "application/json", **(headers or {})}
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raise ServiceClientError(error_message(exc.code, exc.read())) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceClientError(f"cannot reach the service at {url}: {reason}") from None

    def wait_ready(self, timeout_s: float, is_alive: Callable[[], bool] = lambda: True) -> None:
        """Poll ``/readyz`` until the service answers ready.

        Raises:
            ServiceClientError: Not ready within ``timeout_s``, or ``is_alive()`` turned
                False (the server process ended).
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not is_alive():
                raise ServiceClientError(f"the service at {self.base_url} stopped while starting")
            try:
                self.request("GET", "/readyz")
                return
            except ServiceClientError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ServiceClientError(f"the service at {self.base_url} was not ready after {timeout_s:.0f} s: {last}")

    def submit(self, spec: Mapping[str, Any], idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """POST a job spec; returns the job and whether it was created now (False: a retry)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        status, job = self.request("POST", "/api/jobs", dict(spec), headers)
        return job, status == 201

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/jobs/{_quote(job_id)}")[1]

    def jobs(self, *, status: str | None = None, limit: int = 50) -> dict[str, Any]:
        query = {"limit": str(limit)} | ({"status": status} if status else {})
        return self.request("GET", f"/api/jobs?{urllib.parse.urlencode(query)}")[1]

    def pareto(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/jobs/{_quote(job_id)}/pareto")[1]

    def follow(
        self, job_id: str, poll_s: float, on_trial: Callable[[dict[str, Any]], None] = lambda trial: None
    ) -> dict[str, Any]:
        """Call ``on_trial`` for each trial as it finishes, until the job ends; return the job.

        Reads the job's status before its trials: once the status is final, the trials
        read after it are all there (the worker stamps the job after telling a trial).
        """
        after = -1
        while True:
            job = self.job(job_id)
            while True:
                _, page = self.request("GET", f"/api/jobs/{_quote(job_id)}/trials?after={after}&limit=500")
                for trial in page["items"]:
                    if trial["number"] <= page["next_after"]:
                        on_trial(trial)
                after = page["next_after"]
                if not page["has_more"]:
                    break
            if job["status"] in FINISHED_JOB_STATUSES:
                return job
            time.sleep(poll_s)


def _quote(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


def error_message(status: int, raw: bytes) -> str:
    """An error response as lines: the status and detail, then ``field: message`` per error."""
    try:
        payload = json.loads(raw)
    except ValueError:
        return f"HTTP {status}: {raw[:200].decode(errors='replace')}"
    if not isinstance(payload, dict):
        return f"HTTP {status}: {payload}"
    lines = [f"HTTP {status}: {payload.get('detail', '')}"]
    for error in payload.get("errors") or []:
        where = ".".join(str(part) for part in error.get("loc", [])) or "(request)"
        lines.append(f"  {where}: {error.get('msg', '')}")
    return "\n".join(lines)


def read_spec_document(path: Path) -> dict[str, Any]:
    """A spec file's mapping, unvalidated: the service validates it (and knows its devices).

    Raises:
        SpecFileError: Not .json/.yaml/.yml, unreadable, not parseable, or not a mapping.
    """
    from sparse_nas.spec import SpecFileError

    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise SpecFileError(f"spec file {str(path)!r}: expected a .json, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecFileError(f"spec file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        if suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError or yaml.YAMLError: the message says where
        raise SpecFileError(f"spec file {str(path)!r} does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise SpecFileError(f"spec file {str(path)!r}: expected a mapping of fields, got {type(data).__name__}")
    return data
