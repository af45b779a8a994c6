"""Checks an Amazon MSK IAM token (SASL/OAUTHBEARER) the way AWS's own signer builds one.

    python msk_token_check.py TOKEN ACCESS_KEY_ID SECRET_ACCESS_KEY [SESSION_TOKEN]

The token is decoded (base64url, no padding) to its presigned URL; botocore's SigV4QueryAuth,
which aws-msk-iam-sasl-signer-python uses, signs the same `kafka-cluster:Connect` request with
the given credentials at the token's own X-Amz-Date; every signed parameter and the signature
must match. Prints "ok" or the first difference (exit 1). Needs botocore (scripts/moto.sh's
venv has it)."""

import base64
import datetime
import sys
from unittest import mock
from urllib.parse import parse_qs, urlparse

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def main():
    token, key, secret = sys.argv[1:4]
    session = sys.argv[4] if len(sys.argv) > 4 else None
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    got = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    host = urlparse(url).netloc
    region = host.split(".")[1]
    if host != f"kafka.{region}.amazonaws.com":
        sys.exit(f"host {host!r}")
    when = datetime.datetime.strptime(got["X-Amz-Date"], "%Y%m%dT%H%M%SZ")

    class Fixed(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return when

        @classmethod
        def now(cls, tz=None):
            return when.replace(tzinfo=tz) if tz else when

    req = AWSRequest(
        method="GET",
        url=f"https://{host}/",
        params={"Action": "kafka-cluster:Connect"},
    )
    with mock.patch.object(botocore.auth.datetime, "datetime", Fixed):
        botocore.auth.SigV4QueryAuth(
            Credentials(key, secret, session), "kafka-cluster", region, expires=900
        ).add_auth(req)
        want = {k: v[0] for k, v in parse_qs(urlparse(req.prepare().url).query).items()}
    for k, v in want.items():
        if got.get(k) != v:
            sys.exit(f"{k}: token has {got.get(k)!r}, botocore {v!r}")
    extra = set(got) - set(want) - {"User-Agent"}
    if extra:
        sys.exit(f"unexpected parameters {sorted(extra)}")
    print("ok")


main()
