"""`distill serve`'s app through FastAPI's TestClient: answers, and a 4xx with a message for bad requests."""

from __future__ import annotations

import pytest

from student.recommend import Recommender
from tests.student.conftest import RING

testclient = pytest.importorskip("fastapi.testclient")


@pytest.fixture(scope="module")
def client(ring_run):
    from student.serve import create_app

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
    ],
)
def test_bad_requests_are_4xx_with_a_message(client, body, status, message):
    if isinstance(body, str):
        answer = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    else:
        answer = client.post("/recommend", json=body)
    assert answer.status_code == status, answer.text
    assert isinstance(answer.json()["detail"], str) and message in answer.json()["detail"]
