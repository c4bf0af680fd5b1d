"""Identifiers of the example bundle (examples/bundle) that the gateway tests use."""

from __future__ import annotations

from dataclasses import dataclass

from botocore.credentials import Credentials

ACCOUNT = "123456789012"
REGION = "us-west-2"


def user(name: str, account: str = ACCOUNT) -> str:
    return f"arn:aws:iam::{account}:user/{name}"


def stream(name: str, ctime: str) -> str:
    return f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/{name}/{ctime}"


YOUR_STREAM = stream("your_stream", "0123456789012")
OTHER_STREAM = stream("other_stream", "0123456789013")
SHARED_STREAM = stream("shared_stream", "0123456789014")
YOUR_CHANNEL = f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:channel/your_channel/0123456789015"
PARTNER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/PartnerStreamWriter"


@dataclass(frozen=True)
class Key:
    """An access key as a signing client holds it (token: for temporary credentials)."""

    access_key_id: str
    secret: str
    token: str | None = None

    def credentials(self) -> Credentials:
        return Credentials(self.access_key_id, self.secret, self.token)


# The example access keys of examples/bundle/*.yaml.
VIEWER = Key("AKIAEXAMPLEVIEWER001", "viewer/EXAMPLE/secret/key/do/not/use/00")
CAMERA = Key("AKIAEXAMPLECAMERA001", "camera/EXAMPLE/secret/key/do/not/use/00")
ADMIN = Key("AKIAEXAMPLEADMIN0001", "admin/EXAMPLE/secret/key/do/not/use/000")
WRITER = Key("AKIAEXAMPLEWRITER001", "writer/EXAMPLE/secret/key/do/not/use/00")
