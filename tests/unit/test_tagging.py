"""Object tags as S3 takes them: the ``<Tagging>`` body (gateway/xml.py), the
``x-amz-tagging`` header and the tag rules (gateway/tagging.py). Property tests: whatever
arrives answers a tag set or an S3 4xx error, and every valid tag set survives the round
trip through XML and through the header's URL query form."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.common import errors
from edgecache.gateway import tagging, xml
from tests.unit.test_parser_properties import only_s3_errors

# -- strategies --------------------------------------------------------------------------------
allowed_char = st.one_of(
    st.characters(categories=["L", "N", "Zs"]),
    st.sampled_from("_.:/=+-@"),
)
tag_key = st.text(allowed_char, min_size=1, max_size=tagging.MAX_KEY_CHARS).filter(
    lambda k: not k.lower().startswith("aws:")
)
tag_value = st.text(allowed_char, max_size=tagging.MAX_VALUE_CHARS)
tag_sets = st.dictionaries(tag_key, tag_value, max_size=tagging.MAX_TAGS)

xml_token = st.sampled_from(
    ["<Tagging>", "</Tagging>", '<Tagging xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
     "<TagSet>", "</TagSet>", "<Tag>", "</Tag>", "<Key>", "</Key>", "<Value>", "</Value>",
     "<Key/>", "<Value/>", '<?xml version="1.0"?>', "<!DOCTYPE x [<!ENTITY e 'x'>]>", "&e;",
     "k", "v", "aws:x", "a" * 129, "b" * 257, "*", "\x00", "ü", "&#13;", " "]
)  # fmt: skip
xml_body = st.lists(st.one_of(xml_token, st.text(max_size=10)), max_size=24).map(
    lambda p: "".join(p).encode()
)


def body(pairs: list[tuple[str, str]]) -> bytes:
    tags = "".join(f"<Tag><Key>{k}</Key><Value>{v}</Value></Tag>" for k, v in pairs)
    return f"<Tagging><TagSet>{tags}</TagSet></Tagging>".encode()


# -- properties --------------------------------------------------------------------------------
@given(xml_body)
def test_tagging_body_answers_tags_or_an_s3_error(raw: bytes) -> None:
    result = only_s3_errors(lambda b: tagging.validate(xml.parse_tagging(b)), raw)
    if isinstance(result, errors.S3Error):
        assert result.code in {"MalformedXML", "InvalidTag"}
    else:
        assert len(result) <= tagging.MAX_TAGS


@given(tag_sets)
def test_every_valid_tag_set_survives_the_xml_round_trip(tags: dict[str, str]) -> None:
    assert tagging.validate(xml.parse_tagging(xml.tagging_result(tags))) == tags


@given(tag_sets)
def test_every_valid_tag_set_survives_the_header_form(tags: dict[str, str]) -> None:
    for quote_via in (quote, None):  # %20 for a space, and urlencode's default "+"
        header = urlencode(tags, quote_via=quote_via) if quote_via else urlencode(tags)
        assert tagging.header_tags({"x-amz-tagging": header}) == tags


@given(st.text(max_size=300))
def test_tagging_header_answers_tags_or_an_s3_error(value: str) -> None:
    only_s3_errors(tagging.header_tags, {"x-amz-tagging": value})


# -- S3's rules, one by one ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([(f"k{i}", "v") for i in range(11)], "Object tags cannot be greater than 10"),
        ([("k", "1"), ("k", "2")], "Cannot provide multiple Tags with the same key"),
        ([("", "v")], "The TagKey you have provided is invalid"),
        ([("k" * 129, "v")], "The TagKey you have provided is invalid"),
        ([("k*", "v")], "The TagKey you have provided is invalid"),
        ([("k\t", "v")], "The TagKey you have provided is invalid"),
        ([("aws:created", "v")], "Your TagKey cannot be prefixed with aws:"),
        ([("k", "v" * 257)], "The TagValue you have provided is invalid"),
        ([("k", "a;b")], "The TagValue you have provided is invalid"),
    ],
)
def test_tag_sets_s3_refuses(pairs: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(errors.InvalidTag) as caught:
        tagging.validate(pairs)
    assert caught.value.message == message
    assert caught.value.status == 400


def test_tag_sets_s3_takes() -> None:
    pairs = [(f"k{i}", "") for i in range(9)] + [("Ünï cødé 名前 +-=._:/@", "v" * 256)]
    assert list(tagging.validate(pairs).items()) == pairs  # order kept, empty values allowed
    assert tagging.validate([("k" * 128, "")]) == {"k" * 128: ""}


@pytest.mark.parametrize(
    "raw",
    [
        b"<Tagging/>",  # no TagSet
        b"<Tagging><TagSet/><TagSet/></Tagging>",
        b"<Tagging><TagSet><Tag><Key>k</Key></Tag></TagSet></Tagging>",  # no Value
        b"<Tagging><TagSet><Tag><Value>v</Value></Tag></TagSet></Tagging>",  # no Key
        b"<Tagging><TagSet><Tag><Key>k</Key><Key>j</Key><Value/></Tag></TagSet></Tagging>",
        b"<Tagging><TagSet><Other/></TagSet></Tagging>",
        b"<Tags><TagSet/></Tags>",
        b"<Tagging><TagSet>",
        b"",
    ],
)
def test_malformed_tagging_bodies(raw: bytes) -> None:
    with pytest.raises(errors.MalformedXML):
        xml.parse_tagging(raw)


def test_tagging_body_as_sent_and_empty_tag_set() -> None:
    ns = b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
    raw = body([(" spaced ", ""), ("b", "x y")]).replace(b"<Tagging>", b"<Tagging" + ns + b">")
    assert xml.parse_tagging(raw) == [(" spaced ", ""), ("b", "x y")]  # texts not stripped
    assert xml.parse_tagging(b"<Tagging><TagSet/></Tagging>") == []
    assert xml.tagging_result({}).endswith(b"<TagSet /></Tagging>")


def test_header_and_copy_directive() -> None:
    assert tagging.header_tags({}) == {} and tagging.header_tags({"x-amz-tagging": ""}) == {}
    assert tagging.header_tags({"x-amz-tagging": "a=1&b=&c=x+y%2Fz"}) == {
        "a": "1",
        "b": "",
        "c": "x y/z",
    }
    with pytest.raises(errors.InvalidTag):
        tagging.header_tags({"x-amz-tagging": "a=1&a=2"})
    with pytest.raises(errors.InvalidArgument):
        tagging.header_tags({"x-amz-tagging": "a=%FF"})
    assert tagging.copy_tags({"x-amz-tagging": "a=1"}) is None  # COPY is the default
    assert tagging.copy_tags({"x-amz-tagging-directive": "COPY", "x-amz-tagging": "a=1"}) is None
    assert tagging.copy_tags({"x-amz-tagging-directive": "REPLACE", "x-amz-tagging": "a=1"}) == {
        "a": "1"
    }
    assert tagging.copy_tags({"x-amz-tagging-directive": "REPLACE"}) == {}
    with pytest.raises(errors.InvalidArgument):
        tagging.copy_tags({"x-amz-tagging-directive": "MERGE"})
