"""`distill serve`'s app through FastAPI's TestClient: answers, and a 4xx with a message for bad requests."""

from __future__ import annotations

import pytest

from distill.errors import DistillError
from pipeline.recommend import Recommender
from tests.conftest import RING

testclient = pytest.importorskip("fastapi.testclient")


@pytest.fixture(scope="module")
def client(ring_run):
    from pipeline.serve import create_app

    return testclient.TestClient(create_app(Recommender.load(*ring_run), max_k=5, max_history=20))


def test_health(client):
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok" and answer.json()["num_items"] == RING


def test_recommend_a_history_and_a_user(client):
    answer = client.post("/recommend", json={"history": ["m2", "m3", "nope", 99], "k": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [r["item"] for r in body["items"]][0] == "m4" and len(body["items"]) == 3
    assert body["unknown"] == ["nope", "99"] and body["popular"] is False
    answer = client.post("/recommend", json={"user": "u3"})
    assert answer.status_code == 200 and len(answer.json()["items"]) == RING - 8  # u3 saw m3 .. m10
    assert client.post("/recommend", json={"history": []}).json()["popular"] is True


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("{not json", 422, "JSON"),
        ({"history": ["m1"], "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ({"history": ["m1"], "k": 6}, 422, "k: Input should be less than or equal to 5"),
        ({"history": ["m1"] * 21}, 422, "history: List should have at most 20 items"),
        ({"history": "m1 m2"}, 422, "history"),
        ({}, 422, "give either 'user' or 'history'"),
        ({"user": "u1", "history": ["m1"]}, 422, "give either 'user' or 'history'"),
        ({"history": ["m1"], "top": 3}, 422, "top: Extra inputs are not permitted"),
        ({"user": "u999"}, 404, "unknown user 'u999'"),
        ({"history": ["m1"], "k": True}, 422, "k: Input should be a valid integer"),
        ({"history": [True, False]}, 422, "history.0"),
        ({"user": True}, 422, "user"),
        ({"history": ["m1"], "exclude_seen": 1}, 422, "exclude_seen: Input should be a valid boolean"),
        ({"history": ["m" * 257]}, 422, "String should have at most 256 characters"),
        ({"user": "u" * 257}, 422, "user"),
        ("\xff\xfe{", 422, "the body is not JSON (in UTF-8)"),
        ('{"history": ["' + "m" * 60_000 + '"]}', 413, "at most"),
    ],
)
def test_bad_requests_are_4xx_with_a_message(client, body, status, message):
    if isinstance(body, str):
        content = body.encode("latin-1")  # "\xff" as the byte 0xff: not UTF-8
        answer = client.post("/recommend", content=content, headers={"content-type": "application/json"})
    else:
        answer = client.post("/recommend", json=body)
    assert answer.status_code == status, answer.text
    assert isinstance(answer.json()["detail"], str) and message in answer.json()["detail"]


@pytest.mark.parametrize(
    ("content", "content_type", "message"),
    [
        (b"", "application/json", "the body is empty"),
        (b"recommend me something", "application/json", "the body is not JSON (in UTF-8)"),
        (b'{"history": ["m1"]}', "text/plain", "send it with content-type application/json"),
    ],
)
def test_a_body_that_is_not_a_json_request_says_why(client, content, content_type, message):
    answer = client.post("/recommend", content=content, headers={"content-type": content_type})
    assert answer.status_code == 422 and message in answer.json()["detail"], answer.text


@pytest.mark.parametrize("size", [60_000, 100])
def test_a_chunked_body_is_bounded_as_it_arrives(client, size):
    """Without a Content-Length (chunked), the body is counted as it arrives: past the limit, a 413."""
    chunks = [b'{"history": ["', *[b"m" * 1000] * (size // 1000), b"m2" if size < 1000 else b"", b'"]}']
    answer = client.post("/recommend", content=iter(chunks), headers={"content-type": "application/json"})
    if size > 1000:
        assert answer.status_code == 413 and "the most that are read" in answer.json()["detail"]
    else:
        assert answer.status_code == 200, answer.text  # a small chunked body is answered


def test_concurrent_requests_batched_answer_as_one_at_a_time(ring_run):
    import asyncio

    import httpx

    from pipeline.serve import create_app

    recommender = Recommender.load(*ring_run)
    bodies = [
        {"history": ["m1", "m2"], "k": 2},
        {"history": ["m5"], "k": 4, "exclude_seen": False},
        {"history": [], "k": 3},
        {"user": "u7", "k": 1},
        {"history": ["m9", "nope"]},
    ] * 3

    async def answers(max_batch: int) -> list:
        app = create_app(recommender, max_batch=max_batch)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            replies = await asyncio.gather(*(http.post("/recommend", json=body) for body in bodies))
        assert all(r.status_code == 200 for r in replies)
        return [r.json() for r in replies]

    sizes = []
    recommend = recommender.recommend

    def spy(histories, *args):
        sizes.append(len(histories))
        return recommend(histories, *args)

    recommender.recommend = spy
    batched = asyncio.run(answers(4))
    assert max(sizes) > 1 and max(sizes) <= 4  # requests did meet in a batch
    sizes.clear()
    alone = asyncio.run(answers(1))
    assert set(sizes) == {1}

    def items(replies):
        return [[i["item"] for i in a["items"]] for a in replies]

    assert items(batched) == items(alone)
    assert [len(a["items"]) for a in batched[:5]] == [2, 4, 3, 1, 10]
    for a, b in zip(batched, alone, strict=True):
        assert a["unknown"] == b["unknown"] and a["popular"] == b["popular"]
        assert [i["score"] for i in a["items"]] == pytest.approx([i["score"] for i in b["items"]], abs=1e-5)


def test_without_the_serve_extra_the_error_says_what_to_install(ring_run, monkeypatch):
    import sys

    from click.testing import CliRunner

    from cli import main

    monkeypatch.setitem(sys.modules, "fastapi", None)
    result = CliRunner().invoke(main, ["serve", "--run", str(ring_run[0]), "--port", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == "Error: serving needs the serve extra: pip install 'distill[serve]'"


def test_a_port_in_use_is_one_line_of_distills_own(ring_run):
    import socket

    from pipeline.serve import check_address

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(DistillError, match=f"cannot listen on 127.0.0.1:{port}: .*in use"):
            check_address("127.0.0.1", port)
