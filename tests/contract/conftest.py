"""Principals for the HTTP contract suite: one authenticated httpx client per built-in role."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture
def su(backend) -> Iterator[httpx.Client]:
    with backend.http(roles=["SUPER_USER"], subject="root") as c:
        yield c


@pytest.fixture
def admin(backend) -> Iterator[httpx.Client]:
    with backend.http(roles=["ADMIN"], subject="alice-admin") as c:
        yield c


@pytest.fixture
def publisher(backend) -> Iterator[httpx.Client]:
    with backend.http(roles=["PUBLISHER"], subject="paul-publisher") as c:
        yield c


@pytest.fixture
def user(backend) -> Iterator[httpx.Client]:
    with backend.http(roles=["USER"], subject="ursula-user") as c:
        yield c
