"""Redis connection settings: the ACL user, password and TLS files every process
takes, checked together before anything connects."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.api.settings import CommonSettings, RedisConnection, SettingsError, load


def test_the_environment_fills_user_password_and_tls_files(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("PEM")
    settings = load(
        CommonSettings,
        environ={
            "REDIS_URL": "rediss://redis:6380/0",
            "REDIS_USERNAME": "tidings",
            "REDIS_PASSWORD": "pw",
            "REDIS_TLS_CA_FILE": str(ca),
        },
    )
    options = settings.redis_connection().options()
    assert options == {
        "username": "tidings",
        "password": "pw",
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": str(ca),
    }


def test_a_plain_url_keeps_working_without_options() -> None:
    connection = load(CommonSettings, environ={"REDIS_URL": "redis://r:6379/0"}).redis_connection()
    assert connection.options() == {}


@pytest.mark.parametrize(
    ("connection", "message"),
    [
        (RedisConnection("redis://r/0", ca_file="/x"), "REDIS_TLS_CA_FILE set, but --redis-url"),
        (RedisConnection("rediss://r/0", cert_file="/x"), "go together"),
        (RedisConnection("rediss://r/0", username="u"), "without REDIS_PASSWORD"),
        (RedisConnection("rediss://r/0", ca_file="/no/such/ca.crt"), "no such file"),
    ],
)
def test_settings_that_do_not_fit_together_name_the_fix(
    connection: RedisConnection, message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        connection.check()


def test_the_password_is_an_environment_variable_only() -> None:
    import argparse

    from tidings.api.settings import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, CommonSettings)
    flags = {a for action in parser._actions for a in action.option_strings}
    assert "--redis-username" in flags and "--redis-tls-ca-file" in flags
    assert not any("password" in flag for flag in flags)
