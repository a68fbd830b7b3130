"""API fuzzing from the OpenAPI schema (schemathesis + hypothesis) against a real uvicorn server on a small synthetic
shop: no 5xx, and every response conforms to the schema (status codes, content types, bodies, headers).

Every operation gets `FASHIONREC_FUZZ_EXAMPLES` generated cases (default 120: ~1,400 requests counted at the
server, 30-60 s on 2 cores); writes are fuzzed with the write token, so POST/DELETE /items run their handlers, and
schemathesis's own checks also send them without it (401/403 expected). The server-side counts (requests, 5xx)
are checked at the end and printed (`-s` shows them).

    FASHIONREC_FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest tests/test_fuzz_api.py -s   # a longer run
"""

from __future__ import annotations

import collections
import os

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the `test` extra)")
from hypothesis import HealthCheck, settings  # noqa: E402  (after the importorskip on purpose)
from schemathesis.checks import positive_data_acceptance  # noqa: E402

from fashionrec.serving.app import create_app  # noqa: E402
from fashionrec.serving.build import build_state  # noqa: E402
from serving_helpers import AUTH, TOKEN, make_shop, running_server  # noqa: E402

EXAMPLES = int(os.environ.get("FASHIONREC_FUZZ_EXAMPLES", "120"))
MIN_REQUESTS = 1000
COUNTS: collections.Counter = collections.Counter()


class CountingApp:
    """ASGI wrapper: every request and every response status, as the server saw them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        COUNTS["requests"] += 1

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status = message["status"]
                COUNTS[f"{status // 100}xx"] += 1
                if status >= 500:
                    COUNTS.setdefault("examples_5xx", [])
                    COUNTS["examples_5xx"].append(f"{scope['method']} {scope['path']} -> {status}")
            await send(message)

        return await self.app(scope, receive, counting_send)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    root, ids, users = make_shop(tmp_path_factory.mktemp("fuzz") / "hm", n_users=12)
    state = build_state(
        root,
        workspace=tmp_path_factory.mktemp("fuzz-ws"),
        progress=False,
        max_arrivals=200,
        max_arrival_bytes=32 * 1024 * 1024,
    )
    with running_server(CountingApp(create_app(state, write_token=TOKEN))) as url:
        yield url


# The schema is the app's own, built without any data (create_app loads nothing; the handlers are never called
# here), so collection stays cheap; requests go to the fixture's live server. (schemathesis's lazy
# `from_fixture` loader does not work with pytest 9.)
schema = schemathesis.openapi.from_dict(create_app(None).openapi())


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


def _check(case, url: str) -> None:
    # Every built-in check but one: `positive_data_acceptance` wants 2xx/404 for any schema-valid request, but a
    # schema cannot say "an id that exists" or "the bytes of a decodable photo", and the API's contract answers
    # those with 422 (unknown ids in a history, an empty or truncated upload) or 415 (not an image).
    case.call_and_validate(base_url=url, headers=AUTH, timeout=60, excluded_checks=[positive_data_acceptance])


@schema.parametrize()
@FUZZ_SETTINGS
def test_api_conforms_to_its_schema_and_never_answers_5xx(case, fuzz_server):
    _check(case, fuzz_server)


def _fuzz_every_operation(url: str) -> None:
    """The fuzz above, driven here: every operation of the schema, EXAMPLES generated cases each."""
    from hypothesis import given

    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @FUZZ_SETTINGS
        def run(case):
            _check(case, url)

        run()


def test_fuzz_totals(fuzz_server):
    """The server-side figures of the whole fuzz run: after the fuzz items above (file order), or, run alone, after
    fuzzing every operation itself."""
    if not COUNTS:
        _fuzz_every_operation(fuzz_server)
    print(
        f"\nfuzz: {COUNTS['requests']} requests at the server; status classes "
        f"{ {k: v for k, v in COUNTS.items() if k.endswith('xx')} }"
    )
    assert COUNTS["5xx"] == 0, COUNTS.get("examples_5xx")
    if EXAMPLES >= 120:
        assert COUNTS["requests"] >= MIN_REQUESTS
