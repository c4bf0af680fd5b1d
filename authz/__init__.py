"""kvs-authz: AWS IAM policy evaluation for Kinesis Video Streams gateways."""

__version__ = "0.1.0"
