#!/usr/bin/env python3
"""ring/github_token.py: put the GitHub stand-in's token into moto's SSM.

Reads $RING_DIR/secrets/github-token (written by up.sh) and puts it as the SecureString
/runbook/ring/GITHUB_TOKEN, where local.toml's T3.2 reads it (armitage.toml names the real
one). Like ring/seed.py it never overwrites a value that is there: a test that put a wrong
token on purpose keeps it; it warns when the value differs, and `--overwrite` sets it back.
Called by up.sh after the seed; reset.sh has ring/seed.py --github-token call put() after
its seed, sparing a second Python start. Never prints the token.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parent.parent
RING_DIR = Path(os.environ.get("RUNBOOK_RING_DIR") or REPO / ".ring")
ENDPOINT = "http://127.0.0.1:4566"
PARAM = "/runbook/ring/GITHUB_TOKEN"


def put(endpoint: str = ENDPOINT, overwrite: bool = False, quiet: bool = False) -> None:
    """Puts the token as PARAM unless it is there; exits naming the problem when it cannot.
    ring/seed.py --github-token calls it after its seed, in the same process (reset.sh)."""
    token_file = RING_DIR / "secrets" / "github-token"
    try:
        token = token_file.read_text().strip()
    except FileNotFoundError:
        sys.exit(f"github_token: ERROR: {token_file} is missing: run ring/up.sh (it generates the token)")
    ssm = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("ssm", endpoint_url=endpoint,
             config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=30))
    try:
        held = ssm.get_parameter(Name=PARAM, WithDecryption=True)["Parameter"]["Value"]
    except ClientError as e:
        if e.response["Error"]["Code"] != "ParameterNotFound":
            raise
        held = None
    # moto answers a decrypted read of a SecureString with the value itself.
    if held == token:
        said = f"ssm {PARAM}: present"
    elif held is None or overwrite:
        ssm.put_parameter(Name=PARAM, Type="SecureString", Value=token, Overwrite=held is not None)
        said = f"ssm {PARAM}: {'replaced' if held is not None else 'created'} from {token_file}"
    else:
        print(f"github_token: WARNING: ssm {PARAM} holds another value than {token_file}; left as it is "
              f"(ring/github_token.py --overwrite sets it back)", file=sys.stderr)
        return
    if not quiet:
        print(said)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    ap.add_argument("--overwrite", action="store_true", help="replace a value that differs from the file's")
    ap.add_argument("--endpoint", default=ENDPOINT, help="moto's URL (default: the ring's)")
    args = ap.parse_args()
    put(args.endpoint, args.overwrite, args.quiet)


if __name__ == "__main__":
    main()
