"""kvs-authz: AWS IAM policy evaluation for Kinesis Video Streams gateways."""

from . import native as _native

__version__ = "0.1.0"

_native.install()
