"""Service test fixtures: the moto S3 server and buckets come from tests/support/s3.py."""

from tests.support.s3 import moto_s3, s3_bucket  # noqa: F401
