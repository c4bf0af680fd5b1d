"""Generated protobuf code for the authz.v1 API (created by `make protos`; never edited)."""
