"""The policy catalog: defaults drawn from the seeds, TOML loading, and errors naming the bad key."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from consentmw.core.policy import CATEGORIES, LANGUAGES, Policy, PolicyError, Purpose

DEFAULT = Policy.default()
BANNER_KEYS = ("title", "body", "accept_all", "reject_all", "settings", "save", "close", "withdraw",
               "reopen", "gpc_note", "always_on", "collects", "kept_for", "version", "privacy_policy")


# -- the default catalog ----------------------------------------------------------------
def test_default_purposes_in_order() -> None:
    assert [p.id for p in DEFAULT.purposes] == ["necessary", "statistics", "personalisation", "marketing"]
    assert DEFAULT.ids == {"necessary", "statistics", "personalisation", "marketing"}
    assert DEFAULT.required_ids == {"necessary"}
    assert DEFAULT.optional_ids == {"statistics", "personalisation", "marketing"}
    assert DEFAULT.gpc_ids == {"personalisation", "marketing"}


def test_default_version_and_update_date() -> None:
    assert DEFAULT.version == "2026-11-21"
    assert DEFAULT.updated == date(2026, 11, 21)
    assert DEFAULT.privacy_url == "/privacy"


def test_necessary_is_required_and_collects_nothing() -> None:
    nec = DEFAULT["necessary"]
    assert nec.required and not nec.collects and nec.categories == frozenset()
    assert not nec.gpc_opt_out


def test_default_categories_and_retention() -> None:
    stats, pers, mkt = DEFAULT["statistics"], DEFAULT["personalisation"], DEFAULT["marketing"]
    assert stats.categories == {"page", "referrer", "browser", "location", "timing", "clicks", "daily_hash"}
    assert "ip" not in stats.categories and "visitor_id" not in stats.categories
    assert pers.categories == {"visitor_id", "page", "referrer", "language", "location", "browser"}
    assert mkt.categories == frozenset() and not mkt.collects
    assert (stats.retention_days, pers.retention_days, mkt.retention_days, DEFAULT["necessary"].retention_days) \
        == (395, 180, 90, 180)
    assert stats.location_precision == "country" and stats.referrer_precision == "host"
    assert pers.location_precision == "city" and pers.referrer_precision == "full"
    assert [p.id for p in DEFAULT.collecting] == ["statistics", "personalisation"]


def test_category_catalog_covers_the_seeds() -> None:
    for needed in ("ip", "browser", "language", "timing", "page", "referrer", "clicks", "location", "visitor_id"):
        assert needed in CATEGORIES
    for purpose in DEFAULT.purposes:
        assert purpose.categories <= set(CATEGORIES)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_purpose_has_complete_texts(lang: str) -> None:
    for purpose in DEFAULT.purposes:
        for key in ("title", "description"):
            text = purpose.texts[lang][key]
            assert text.strip() and text == text.strip(), (purpose.id, lang, key)
    titles = [p.texts[lang]["title"] for p in DEFAULT.purposes]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_banner_text_key_in_every_language(lang: str) -> None:
    en_keys = set(DEFAULT.texts["en"])
    assert set(BANNER_KEYS) <= en_keys
    assert set(DEFAULT.texts[lang]) == en_keys
    for key, text in DEFAULT.texts[lang].items():
        assert text.strip(), (lang, key)
        # placeholders survive translation
        assert set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", DEFAULT.texts["en"][key])), key


@pytest.mark.parametrize("lang", ("ru", "kk"))
def test_translations_are_translated(lang: str) -> None:
    for purpose in DEFAULT.purposes:
        assert purpose.texts[lang]["description"] != purpose.texts["en"]["description"]
        assert re.search("[а-яА-ЯёЁәғқңөұүһіӘҒҚҢӨҰҮҺІ]", purpose.texts[lang]["description"])
    assert DEFAULT.texts[lang]["reject_all"] != DEFAULT.texts["en"]["reject_all"]
    if lang == "kk":  # Kazakh-specific letters: not just Russian copied over
        assert re.search("[әғқңөұүһі]", " ".join(DEFAULT.texts["kk"].values()))


def test_every_category_has_texts_in_every_language() -> None:
    assert set(DEFAULT.category_texts) == set(CATEGORIES)
    for cat, texts in DEFAULT.category_texts.items():
        assert set(texts) == set(LANGUAGES), cat
        assert all(t.strip() for t in texts.values()), cat


def test_text_falls_back_to_english() -> None:
    p = DEFAULT["statistics"]
    assert p.text("ru", "title") == "Статистика"
    assert p.text("de", "title") == "Statistics"
    assert p.text("en", "nonexistent") == ""


def test_lookup_and_contains() -> None:
    assert "statistics" in DEFAULT and "bogus" not in DEFAULT and 3 not in DEFAULT
    assert isinstance(DEFAULT["marketing"], Purpose)
    with pytest.raises(KeyError):
        DEFAULT["bogus"]


def test_public_shape() -> None:
    pub = DEFAULT.public()
    assert pub["version"] == DEFAULT.version and pub["updated"] == "2026-11-21"
    assert [p["id"] for p in pub["purposes"]] == [p.id for p in DEFAULT.purposes]
    for p in pub["purposes"]:
        assert set(p) >= {"id", "required", "categories", "retention_days", "texts"}
        assert p["categories"] == sorted(p["categories"])
        assert set(p["texts"]) == set(LANGUAGES)
    only_ru = DEFAULT.public(("ru",))
    assert set(only_ru["texts"]) == {"ru"}
    assert all(set(p["texts"]) == {"ru"} for p in only_ru["purposes"])


def test_texts_hash_differs_per_language_and_text() -> None:
    hashes = {lang: DEFAULT.texts_hash(lang) for lang in LANGUAGES}
    assert len(set(hashes.values())) == 3
    assert all(re.fullmatch("[0-9a-f]{16}", h) for h in hashes.values())
    assert Policy.default().texts_hash("en") == hashes["en"]  # stable
    changed = Policy.from_dict({"version": "x", "updated": "2026-11-21",
                                "texts": {"en": {"title": "Something else"}}}, base=DEFAULT)
    assert changed.texts_hash("en") != hashes["en"]
    assert changed.texts_hash("ru") != hashes["ru"] or changed.version != DEFAULT.version


# -- TOML files -------------------------------------------------------------------------
def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "consent.toml"
    path.write_text(text, "utf-8")
    return path


def test_default_file_loads_as_a_file(tmp_path: Path) -> None:
    from importlib import resources
    text = resources.files("consentmw.core").joinpath("default_policy.toml").read_text("utf-8")
    loaded = Policy.from_file(write(tmp_path, text))
    assert loaded == DEFAULT or (loaded.ids == DEFAULT.ids and loaded.version == DEFAULT.version)
    assert loaded.texts == DEFAULT.texts


def test_minimal_file_inherits_default_purposes_and_texts(tmp_path: Path) -> None:
    p = Policy.from_file(write(tmp_path, 'version = "2027-01"\nupdated = 2027-01-15\n'))
    assert p.version == "2027-01" and p.updated == date(2027, 1, 15)
    assert p.ids == DEFAULT.ids and p.texts["kk"] == DEFAULT.texts["kk"]


def test_file_overrides_one_purpose_and_keeps_its_texts(tmp_path: Path) -> None:
    p = Policy.from_file(write(tmp_path, '''
version = "v2"
updated = "2027-02-01"
[[purposes]]
id = "necessary"
required = true
[[purposes]]
id = "statistics"
retention_days = 30
categories = ["page", "timing"]
[purposes.texts.en]
title = "Counting"
'''))
    assert [x.id for x in p.purposes] == ["necessary", "statistics"]
    stats = p["statistics"]
    assert stats.retention_days == 30 and stats.categories == {"page", "timing"}
    assert stats.texts["en"]["title"] == "Counting"
    assert stats.texts["en"]["description"] == DEFAULT["statistics"].texts["en"]["description"]
    assert stats.texts["ru"] == DEFAULT["statistics"].texts["ru"]
    assert p.updated == date(2027, 2, 1)


def test_file_adds_a_new_purpose(tmp_path: Path) -> None:
    p = Policy.from_file(write(tmp_path, '''
version = "v3"
updated = 2027-03-01
[[purposes]]
id = "necessary"
[[purposes]]
id = "research"
categories = ["page", "ip"]
retention_days = 7
gpc_opt_out = true
ip_mask_bytes = 3
ipv6_prefix = 64
[purposes.texts.en]
title = "Research"
'''))
    r = p["research"]
    assert r.categories == {"page", "ip"} and r.retention_days == 7 and r.gpc_opt_out
    assert r.ip_mask_bytes == 3 and r.ipv6_prefix == 64
    assert p["necessary"].required  # inherited from the default's purpose of the same id
    assert p.gpc_ids == {"research"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        Policy.from_file(tmp_path / "nope.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not valid TOML"):
        Policy.from_file(write(tmp_path, 'version = "x\nupdated = ]'))


def test_policy_error_is_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


HEAD = 'version = "v1"\nupdated = 2026-11-21\n'
NEC = '[[purposes]]\nid = "necessary"\nrequired = true\n'


@pytest.mark.parametrize("text, key", [
    ('version = "v1"\n', "updated"),                                   # updated missing
    (HEAD.replace("2026-11-21", '"21.11.2026"'), "updated"),            # not ISO
    (HEAD.replace("2026-11-21", "12"), "updated"),                      # wrong type
    ('updated = 2026-11-21\n', "version"),                              # version missing
    (HEAD.replace('"v1"', '""'), "version"),                            # empty
    (HEAD.replace('"v1"', '"has space"'), "version"),                   # bad characters
    (HEAD.replace('"v1"', '"v/1"'), "version"),
    (HEAD.replace('"v1"', '"' + "v" * 41 + '"'), "version"),            # too long
    (HEAD.replace('"v1"', "3"), "version"),                             # not a string
    (HEAD + 'colour = "red"\n', "colour"),                              # unknown top-level key
    (HEAD + "privacy_url = 5\n", "privacy_url"),
    (HEAD + "purposes = []\n", "purposes"),                             # empty purposes
    (HEAD + 'purposes = "all"\n', "purposes"),
    (HEAD + '[[purposes]]\nid = "stats"\ncategories = ["page"]\n[purposes.texts.en]\ntitle = "S"\n',
     "purposes"),                                                       # no required purpose
    (HEAD + NEC + '[[purposes]]\nid = "necessary"\n', "purposes"),     # duplicate id
    (HEAD + NEC + '[[purposes]]\nid = "Stats"\n', "purposes[1].id"),   # not lower case
    (HEAD + NEC + '[[purposes]]\nid = "my-purpose"\n', "purposes[1].id"),
    (HEAD + NEC + '[[purposes]]\nid = 7\n', "purposes[1].id"),
    (HEAD + NEC + '[[purposes]]\nrequired = false\n', "purposes[1].id"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\ncolour = 1\n', "purposes[1].colour"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\ncategories = ["page", "dna"]\n', "purposes[1].categories"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\ncategories = "page"\n', "purposes[1].categories"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\nretention_days = 0\n', "purposes[1].retention_days"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\nretention_days = 4000\n', "purposes[1].retention_days"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\nretention_days = "30"\n', "purposes[1].retention_days"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\nretention_days = true\n', "purposes[1].retention_days"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\nrequired = "yes"\n', "purposes[1].required"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\ntexts = {en = {title = "S"}}\ngpc_opt_out = 1\n',
     "purposes[1].gpc_opt_out"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\nlocation_precision = "street"\n', "purposes[1].location_precision"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\nreferrer_precision = "path"\n', "purposes[1].referrer_precision"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\nip_mask_bytes = 4\n', "purposes[1].ip_mask_bytes"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\nipv6_prefix = 56\n', "purposes[1].ipv6_prefix"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\n', "purposes[1].texts.en.title"),   # new purpose, no title
    (HEAD + NEC + '[[purposes]]\nid = "s"\ntexts = "hi"\n', "purposes[1].texts"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\n[purposes.texts]\nen = "hi"\n', "purposes[1].texts.en"),
    (HEAD + NEC + '[[purposes]]\nid = "s"\n[purposes.texts.en]\ntitle = 5\n', "purposes[1].texts.en.title"),
    (HEAD + '[[purposes]]\nid = "necessary"\nrequired = true\ncategories = ["ip"]\n',
     "purposes[0].categories"),                                         # required may not track
    (HEAD + "[categories.dna]\nen = 'DNA'\n", "categories.dna"),
    (HEAD + "[categories]\nip = 'IP'\n", "categories.ip"),
    (HEAD + "[texts.en]\ntitle = 1\n", "texts.en.title"),
    (HEAD + "[texts]\nen = 'x'\n", "texts.en"),
])
def test_invalid_file_names_the_bad_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_file(write(tmp_path, text))
    message = str(info.value)
    assert message.startswith(key) or f"{key}:" in message or f"{key} " in message, message


def test_purposes_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"purposes\[1\]: expected a table"):
        Policy.from_file(write(tmp_path, HEAD + 'purposes = [{id = "necessary"}, "stats"]\n'))


# -- from_dict without a base: nothing is inherited --------------------------------------
def test_from_dict_without_base_requires_purposes() -> None:
    with pytest.raises(PolicyError, match="^purposes"):
        Policy.from_dict({"version": "v", "updated": "2026-01-01"})


def test_from_dict_without_base_needs_title() -> None:
    with pytest.raises(PolicyError, match=r"purposes\[0\]\.texts\.en\.title"):
        Policy.from_dict({"version": "v", "updated": "2026-01-01",
                          "purposes": [{"id": "necessary", "required": True}]})


def test_from_dict_accepts_date_objects_and_strings() -> None:
    base: dict[str, Any] = {"purposes": [{"id": "necessary", "required": True,
                                          "texts": {"en": {"title": "N"}}}]}
    assert Policy.from_dict({"version": "a", "updated": date(2026, 5, 1), **base}).updated == date(2026, 5, 1)
    assert Policy.from_dict({"version": "a", "updated": "2026-05-01", **base}).updated == date(2026, 5, 1)


@pytest.mark.parametrize("version", ["1", "2026-11-21", "v1.2_rc-3", "A" * 40])
def test_valid_versions(version: str) -> None:
    assert Policy.from_dict({"version": version, "updated": "2026-11-21"}, base=DEFAULT).version == version


def test_a_new_version_is_a_new_policy() -> None:
    bumped = Policy.from_dict({"version": "2027-01-01", "updated": "2027-01-01"}, base=DEFAULT)
    assert bumped != DEFAULT and bumped.version != DEFAULT.version
    assert bumped.ids == DEFAULT.ids
