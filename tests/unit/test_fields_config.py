"""``[fields]`` (issue 10): every key of the interface parsed, every bad value named by its key."""

from __future__ import annotations

import pytest

from syncd.config import ConfigError, FieldsConfig, parse_config
from syncd.fields.group import GROUPS

URL = "mysql+pymysql://syncd:pw@127.0.0.1:3306/wordpress"


def parse(fields: object) -> FieldsConfig:
    return parse_config({"database": {"url": URL}, "fields": fields}, env={}).fields


def test_defaults_every_group_off() -> None:
    cfg = parse({})
    assert cfg.modes == dict.fromkeys(GROUPS, "off")
    assert (cfg.schedule_cron, cfg.authority, cfg.authority_blog) == ("*/15 * * * *", "newest", None)
    assert (cfg.blogs, cfg.allow_mismatch, cfg.missing_terms) == ({}, {}, "skip")
    assert parse_config({"database": {"url": URL}}, env={}).fields == cfg


def test_the_issue_example() -> None:
    cfg = parse(
        {
            "price": "realtime",
            "tax": "scheduled",
            "content": "manual",
            "schedule": {"cron": "*/15 * * * *", "authority": "newest"},
            "blogs": {"price": [1, 2]},
            "allow_mismatch": {"price": False},
            "terms": {"missing": "create"},
        }
    )
    assert cfg.modes["price"] == "realtime" and cfg.modes["tax"] == "scheduled"
    assert cfg.modes["content"] == "manual" and cfg.modes["shipping"] == "off"
    assert cfg.groups_in("scheduled") == ("tax",)
    assert cfg.blogs == {"price": (1, 2)} and cfg.blogs_for("tax") == ()
    assert cfg.takes_part("price", 2) and not cfg.takes_part("price", 3) and cfg.takes_part("tax", 3)
    assert cfg.allow_mismatch == {"price": False}
    assert cfg.missing_terms == "create"


@pytest.mark.parametrize("authority", ["3", 3])
def test_authority_blog_id_as_text_or_integer(authority: object) -> None:
    cfg = parse({"schedule": {"authority": authority}})
    assert (cfg.authority, cfg.authority_blog) == ("3", 3)


BAD = [
    ({"colour": "manual"}, "fields.colour", "knows: price, tax"),
    ({"price": "live"}, "fields.price", "'off', 'realtime', 'scheduled', 'manual'"),
    ({"price": True}, "fields.price", "'off', 'realtime'"),
    ({"schedule": {"cron": "every 5 minutes"}}, "fields.schedule.cron", "crontab"),
    ({"schedule": {"cron": "61 * * * *"}}, "fields.schedule.cron", "crontab"),
    ({"schedule": {"cron": 15}}, "fields.schedule.cron", "crontab"),
    ({"schedule": {"when": "x"}}, "fields.schedule.when", "knows: cron, authority"),
    ({"schedule": {"authority": "latest"}}, "fields.schedule.authority", '"newest" or a blog id'),
    ({"schedule": {"authority": 0}}, "fields.schedule.authority", '"newest" or a blog id'),
    ({"schedule": {"authority": "blog:2"}}, "fields.schedule.authority", '"newest" or a blog id'),
    ({"schedule": {"authority": True}}, "fields.schedule.authority", '"newest" or a blog id'),
    ({"blogs": {"price": ["1"]}}, "fields.blogs.price", "list of distinct blog ids"),
    ({"blogs": {"price": [1.5]}}, "fields.blogs.price", "list of distinct blog ids"),
    ({"blogs": {"price": 1}}, "fields.blogs.price", "list of distinct blog ids"),
    ({"blogs": {"prices": [1]}}, "fields.blogs.prices", "knows: price"),
    ({"allow_mismatch": {"price": "yes"}}, "fields.allow_mismatch.price", "true or false"),
    ({"allow_mismatch": {"colour": True}}, "fields.allow_mismatch.colour", "knows: price"),
    ({"terms": {"missing": "ignore"}}, "fields.terms.missing", "'skip', 'create'"),
    ({"terms": {"create": True}}, "fields.terms.create", "knows: missing"),
    ({"schedule": "*/5 * * * *"}, "fields.schedule", "expected a table"),
]


@pytest.mark.parametrize(("fields", "key", "expected"), BAD)
def test_bad_values_name_their_key(fields: object, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(fields)
    assert exc.value.key == key
    assert key in str(exc.value) and expected in str(exc.value)
