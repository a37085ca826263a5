import pytest

from edgecache.common import errors
from edgecache.common.names import validate_bucket_name, validate_key


@pytest.mark.parametrize("name", ["abc", "my-bucket", "my.bucket.1", "a" * 63, "0ab"])
def test_valid_bucket_names(name: str) -> None:
    validate_bucket_name(name)


@pytest.mark.parametrize(
    "name",
    ["ab", "a" * 64, "Abc", "-abc", "abc-", "a..b", "a_b", "192.168.5.4", "xn--abc", "abc-s3alias", ""],
)
def test_invalid_bucket_names(name: str) -> None:
    with pytest.raises(errors.InvalidBucketName):
        validate_bucket_name(name)


def test_keys() -> None:
    validate_key("b", "k" * 1024)
    validate_key("b", "ü" * 512)
    with pytest.raises(errors.KeyTooLongError):
        validate_key("b", "ü" * 513)
    with pytest.raises(errors.InvalidArgument):
        validate_key("b", "")
