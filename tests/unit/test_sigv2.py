"""SigV2 verification: AWS's documented examples, botocore's signers, and the time checks.

The examples are those of the S3 developer guide ("Signing and authenticating REST
requests"): the secret key ``wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY``.
"""

from __future__ import annotations

import email.utils
import time
import urllib.parse

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.common import errors
from edgecache.gateway import auth, sigv2

AK, SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
CREDENTIALS = {AK: SK}
DOC_DATE = "Tue, 27 Mar 2007 19:36:42 +0000"
DOC_NOW = email.utils.parsedate_to_datetime(DOC_DATE).timestamp()


def check(method, path, query, headers, *, now=DOC_NOW, host_bucket="", region="us-east-1"):
    return auth.verify(
        method,
        path,
        query,
        headers,
        credentials=CREDENTIALS,
        region=region,
        now=now,
        host_bucket=host_bucket,
    )


def test_aws_example_object_get_virtual_hosted():
    headers = [
        (b"host", b"awsexamplebucket1.us-west-1.s3.amazonaws.com"),
        (b"date", DOC_DATE.encode()),
        (b"authorization", f"AWS {AK}:qgk2+6Sv9/oM7G3qLEjTH1a1l1g=".encode()),
    ]
    ctx = check("GET", b"/photos/puppy.jpg", b"", headers, host_bucket="awsexamplebucket1")
    assert ctx.access_key == AK and ctx.content_sha256 == "UNSIGNED-PAYLOAD" and not ctx.presigned
    with pytest.raises(errors.SignatureDoesNotMatch):
        check("GET", b"/photos/puppy.jpg", b"", headers, host_bucket="otherbucket")
    with pytest.raises(errors.RequestTimeTooSkewed):
        check(
            "GET",
            b"/photos/puppy.jpg",
            b"",
            headers,
            host_bucket="awsexamplebucket1",
            now=DOC_NOW + 901,
        )


def test_aws_example_query_string():
    query = f"AWSAccessKeyId={AK}&Expires=1175139620&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D"
    headers = [(b"host", b"johnsmith.s3.amazonaws.com")]
    ctx = check("GET", b"/photos/puppy.jpg", query.encode(), headers, host_bucket="johnsmith")
    assert ctx.presigned
    with pytest.raises(errors.AccessDenied, match="expired"):
        check(
            "GET",
            b"/photos/puppy.jpg",
            query.encode(),
            headers,
            host_bucket="johnsmith",
            now=1175139621,
        )
    with pytest.raises(errors.SignatureDoesNotMatch):
        check(
            "GET",
            b"/photos/puppy.jpg",
            query.replace("1175139620", "1175139629").encode(),
            headers,
            host_bucket="johnsmith",
        )


@pytest.mark.parametrize(
    ("query", "match"),
    [
        (f"AWSAccessKeyId={AK}&Signature=abc", "requires"),
        (f"AWSAccessKeyId={AK}&Expires=soon&Signature=abc", "Invalid date"),
        (f"AWSAccessKeyId={AK}&Expires={'9' * 4000}&Signature=abc", "Invalid date"),
        (f"AWSAccessKeyId={AK}&Expires={int(DOC_NOW) + 8 * 86400}&Signature=abc", "week"),
    ],
)
def test_bad_query_parameters_are_access_denied(query, match):
    with pytest.raises(errors.AccessDenied, match=match):
        check("GET", b"/b/k", query.encode(), [])


def test_unknown_key_and_garbage_signature():
    with pytest.raises(errors.InvalidAccessKeyId):
        check(
            "GET",
            b"/b/k",
            b"",
            [(b"date", DOC_DATE.encode()), (b"authorization", b"AWS NOBODY:abc=")],
        )
    with pytest.raises(errors.SignatureDoesNotMatch):
        check(
            "GET",
            b"/b/k",
            b"",
            [(b"date", DOC_DATE.encode()), (b"authorization", f"AWS {AK}:!!".encode())],
        )
    with pytest.raises(errors.AccessDenied):
        check(
            "GET", b"/b/k", b"", [(b"date", DOC_DATE.encode()), (b"authorization", b"AWS nocolon")]
        )


@pytest.mark.parametrize("value", [b"", b"   "])
def test_an_empty_authorization_is_access_denied(value):
    with pytest.raises(errors.AccessDenied):
        check("GET", b"/b/k", b"", [(b"authorization", value)])


@pytest.mark.parametrize(
    "date",
    [b"Fri, 31 Dec 9999 23:59:59 -1200", b"Fri, 31 Dec 99999999999999 23:59:59 GMT", b"\xff"],
)
def test_dates_out_of_range_are_access_denied(date):
    with pytest.raises(errors.AccessDenied, match="valid Date"):
        check("GET", b"/b/k", b"", [(b"date", date), (b"authorization", f"AWS {AK}:abc=".encode())])
    with pytest.raises(errors.AccessDenied, match="valid Date"):
        check(
            "GET",
            b"/b/k",
            b"",
            [
                (b"date", date),
                (b"x-amz-content-sha256", b"UNSIGNED-PAYLOAD"),
                (
                    b"authorization",
                    b"AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host, Signature=00",
                ),
            ],
        )


def test_both_mechanisms_at_once():
    headers = [(b"date", DOC_DATE.encode()), (b"authorization", f"AWS {AK}:abc=".encode())]
    with pytest.raises(errors.InvalidArgument, match="one auth mechanism"):
        check("GET", b"/b/k", f"AWSAccessKeyId={AK}&Signature=x&Expires=1".encode(), headers)


# -- botocore's signers, with what S3 users send ----------------------------------------------
def _asgi(request: botocore.awsrequest.AWSRequest):
    prepared = request.prepare()
    url = urllib.parse.urlsplit(prepared.url)
    headers = [(b"host", url.netloc.encode())]
    for name, value in prepared.headers.items():
        headers.append(
            (name.lower().encode(), value.encode("utf-8") if isinstance(value, str) else value)
        )
    return prepared.method, url.path.encode(), url.query.encode(), headers


_key_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40
)
_meta_value = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_categories=("Cs",)), max_size=40
).map(str.strip)


@given(key=_key_text, meta=_meta_value, sub=st.sampled_from(["", "uploadId=abc", "acl", "tagging"]))
def test_botocore_hmacv1_round_trip(key, meta, sub):
    url = f"http://127.0.0.1:9000/bucket/{urllib.parse.quote(key.encode(), safe='/~')}"
    if sub:
        url += "?" + sub
    request = botocore.awsrequest.AWSRequest(
        method="PUT",
        url=url,
        data=b"body",
        headers={
            "Content-Type": "text/plain",
            "Content-MD5": "XUFAKrxLKna5cZ2REBfFkg==",
            "x-amz-meta-m": meta,
        },
    )
    botocore.auth.HmacV1Auth(botocore.credentials.Credentials(AK, SK)).add_auth(request)
    method, path, query, headers = _asgi(request)
    check(method, path, query, headers, now=time.time())
    tampered = [(n, v + b"x" if n == b"content-type" else v) for n, v in headers]
    with pytest.raises(errors.SignatureDoesNotMatch):
        check(method, path, query, tampered, now=time.time())


def test_botocore_presigned_url_with_response_override():
    request = botocore.awsrequest.AWSRequest(
        method="GET",
        url="http://127.0.0.1:9000/bucket/k?response-content-type=text%2Fplain&x-id=GetObject",
    )
    botocore.auth.HmacV1QueryAuth(botocore.credentials.Credentials(AK, SK), expires=60).add_auth(
        request
    )
    method, path, query, headers = _asgi(request)
    assert check(method, path, query, headers, now=time.time()).presigned
    with pytest.raises(errors.SignatureDoesNotMatch):
        check(
            method, path, query.replace(b"text%2Fplain", b"text%2Fhtml"), headers, now=time.time()
        )


def test_string_to_sign_canonical_amz_headers():
    text = sigv2.string_to_sign(
        "PUT",
        b"/b/k",
        {"uploads": "", "prefix": "p"},
        {"x-amz-meta-b": ["  two   words ", "x"], "x-amz-acl": ["private"], "content-type": ["t"]},
        date_line="D",
    )
    assert text == "PUT\n\nt\nD\nx-amz-acl:private\nx-amz-meta-b:two words,x\n/b/k?uploads"
