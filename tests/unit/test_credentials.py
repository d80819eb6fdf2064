"""The database password from systemd's ``LoadCredential=db-password:...`` ($CREDENTIALS_DIRECTORY).

Pure: no database. The password must reach the URL without ever being on a command line, in the
unit's environment, or in the redacted configuration that syncd logs at start-up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.config import ConfigError, parse_config

DATA = {"database": {"url": "mysql+pymysql://syncd@127.0.0.1:3306/wordpress"}}


def creds(tmp_path: Path, content: str | bytes) -> dict[str, str]:
    d = tmp_path / "credentials"
    d.mkdir()
    p = d / "db-password"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return {"CREDENTIALS_DIRECTORY": str(d)}


def test_password_from_the_credential_file(tmp_path: Path) -> None:
    cfg = parse_config(DATA, env=creds(tmp_path, "s3cret:@/pw\n"))
    assert cfg.database.sa_url.password == "s3cret:@/pw", "one trailing newline dropped, nothing escaped"
    assert "s3cret" not in str(cfg.redacted())


def test_environment_password_wins_over_the_credential(tmp_path: Path) -> None:
    env = {**creds(tmp_path, "from-file"), "SYNCD_DATABASE_PASSWORD": "from-env"}
    assert parse_config(DATA, env=env).database.sa_url.password == "from-env"


def test_no_credential_file_leaves_the_url_alone(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cfg = parse_config(DATA, env={"CREDENTIALS_DIRECTORY": str(tmp_path / "empty")})
    assert cfg.database.sa_url.password is None


def test_unreadable_credential_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the database password credential"):
        parse_config(DATA, env=creds(tmp_path, b"\xff\xfe not utf-8"))
