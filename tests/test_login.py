"""Ordinary (non-staff) users log in on the example site at /accounts/login/ and reach the chat page."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client


@pytest.fixture
def login_required(settings: Any) -> None:
    """The example site outside demo mode: the chat page needs an account."""
    settings.AGENTAPP = {**settings.AGENTAPP, "ALLOW_ANONYMOUS": False}


@pytest.mark.django_db
def test_an_ordinary_user_logs_in_at_accounts_login_and_reaches_the_chat_page(login_required) -> None:
    user = get_user_model().objects.create_user("ada", password="a-long-password")
    assert not user.is_staff
    http = Client(enforce_csrf_checks=True)

    redirect = http.get("/")
    assert redirect.status_code == 302 and redirect["Location"] == "/accounts/login/?next=/"
    form = http.get(redirect["Location"])
    assert form.status_code == 200
    body = form.content.decode()
    assert 'name="username"' in body and 'name="password"' in body and 'name="next" value="/"' in body
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body)
    assert token, body

    wrong = http.post("/accounts/login/", {"username": "ada", "password": "wrong", "csrfmiddlewaretoken": token[1]})
    assert wrong.status_code == 200 and "didn't match" in wrong.content.decode()

    answer = http.post(
        "/accounts/login/",
        {"username": "ada", "password": "a-long-password", "next": "/", "csrfmiddlewaretoken": token[1]},
    )
    assert answer.status_code == 302 and answer["Location"] == "/"
    page = http.get("/")
    assert page.status_code == 200 and 'data-authenticated="1"' in page.content.decode()


@pytest.mark.django_db
def test_without_next_a_login_lands_on_the_chat_page(login_required) -> None:
    get_user_model().objects.create_user("ada", password="a-long-password")
    answer = Client().post("/accounts/login/", {"username": "ada", "password": "a-long-password"})
    assert answer.status_code == 302 and answer["Location"] == "/"
