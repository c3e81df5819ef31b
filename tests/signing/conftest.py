"""The signing tests share the API tests' ``cairn serve`` over Gemma 3 270M."""

from tests.server.conftest import serve  # noqa: F401 - the fixture, shared
