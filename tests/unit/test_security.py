"""API keys: loading, the protection rule, the start-up guard, the OpenAPI annotations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ia_continu.api.security import (
    ProtectionRule,
    SecurityConfigError,
    check_startup_security,
    document_api_key,
    is_loopback_host,
    load_api_keys,
)
from ia_continu.config import Settings


def test_load_api_keys_splits_commas_and_trims(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(api_keys=" alpha-key-0123456789 , beta-key-0123456789,,")
    assert load_api_keys(s) == ("alpha-key-0123456789", "beta-key-0123456789")


def test_load_api_keys_empty_env_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IA_API_KEYS", "")
    monkeypatch.setenv("IA_API_KEYS_FILE", "")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.api_keys is None and s.api_keys_file is None
    assert load_api_keys(s) == ()


def test_load_api_keys_reads_file_skipping_comments(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\n\nfile-key-one-0123456789\n  file-key-two-0123456789  \n")
    s = make_settings(api_keys="env-key-0123456789", api_keys_file=keys_file)
    assert load_api_keys(s) == (
        "env-key-0123456789",
        "file-key-one-0123456789",
        "file-key-two-0123456789",
    )


def test_load_api_keys_missing_file_refuses(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # Silently serving without protection because the file is missing would be worse.
    with pytest.raises(SecurityConfigError, match="IA_API_KEYS_FILE"):
        load_api_keys(make_settings(api_keys_file=tmp_path / "absent"))


def test_load_api_keys_file_without_key_refuses(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# nothing yet\n\n")
    with pytest.raises(SecurityConfigError, match="no key"):
        load_api_keys(make_settings(api_keys_file=keys_file))


def test_load_api_keys_only_commas_refuses(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(SecurityConfigError, match="no key"):
        load_api_keys(make_settings(api_keys=" , ,"))


def test_load_api_keys_rejects_unsendable_key_without_echoing_it(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(SecurityConfigError) as info:
        load_api_keys(make_settings(api_keys="good-key-0123456789,bad key with spaces"))
    assert "key #2" in str(info.value)
    assert "bad key" not in str(info.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("api.example.com", False),
    ],
)
def test_is_loopback_host_classifies_addresses(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_check_startup_security_refuses_exposed_anonymous_api(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(SecurityConfigError) as info:
        check_startup_security(make_settings(host="0.0.0.0"))
    message = str(info.value)
    assert "refusing to start" in message
    assert "IA_API_KEYS" in message and "IA_ALLOW_ANONYMOUS=true" in message


@pytest.mark.parametrize(
    "overrides",
    [
        {"host": "127.0.0.1"},
        {"host": "0.0.0.0", "allow_anonymous": True},
        {"host": "0.0.0.0", "api_keys": "a-key-long-enough-0123"},
    ],
)
def test_check_startup_security_allows_safe_configurations(
    make_settings: Callable[..., Settings], overrides: dict[str, object]
) -> None:
    keys = check_startup_security(make_settings(**overrides))
    assert keys == (("a-key-long-enough-0123",) if "api_keys" in overrides else ())


def test_create_app_refuses_exposed_anonymous_api(make_settings: Callable[..., Settings]) -> None:
    from ia_continu.api.app import create_app

    with pytest.raises(SecurityConfigError, match="refusing to start"):
        create_app(make_settings(host="0.0.0.0"))


@pytest.mark.parametrize(
    ("method", "path", "protected", "protected_with_predict"),
    [
        ("GET", "/health", False, False),
        ("GET", "/models", False, False),
        ("HEAD", "/metrics", False, False),
        ("OPTIONS", "/generate", False, False),
        ("POST", "/predict", False, True),
        ("POST", "/predict/", False, True),
        ("post", "/predict/batch", False, True),
        ("PUT", "/predict", True, True),
        ("POST", "/generate", True, True),
        ("POST", "/retrain", True, True),
        ("POST", "/models/v1/activate", True, True),
        ("POST", "/monitoring/run", True, True),  # a route added later: protected by default
        ("DELETE", "/predictions", True, True),
        ("PATCH", "/anything", True, True),
    ],
)
def test_protection_rule_protects_writes_by_default(
    method: str, path: str, protected: bool, protected_with_predict: bool
) -> None:
    assert ProtectionRule().is_protected(method, path) is protected
    assert ProtectionRule(protect_predict=True).is_protected(method, path) is (
        protected_with_predict
    )


def test_document_api_key_marks_exactly_protected_operations() -> None:
    ok = {"200": {"description": "ok"}}
    schema = {
        "paths": {
            "/health": {"get": {"responses": dict(ok)}},
            "/predict": {"post": {"responses": dict(ok)}},
            "/generate": {"post": {"responses": dict(ok)}},
            "/models/{version}/activate": {"post": {"responses": dict(ok)}},
        }
    }
    document_api_key(schema, ProtectionRule())
    document_api_key(schema, ProtectionRule())  # idempotent
    scheme = schema["components"]["securitySchemes"]["ApiKeyHeader"]  # type: ignore[index]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-API-Key"}
    paths = schema["paths"]
    for path, method in (("/generate", "post"), ("/models/{version}/activate", "post")):
        operation = paths[path][method]
        assert operation["security"] == [{"ApiKeyHeader": []}]
        assert "401" in operation["responses"]
    for path, method in (("/health", "get"), ("/predict", "post")):
        operation = paths[path][method]
        assert "security" not in operation and "401" not in operation["responses"]
