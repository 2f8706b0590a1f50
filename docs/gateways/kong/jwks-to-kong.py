#!/usr/bin/env python3
"""Turns keygate's JWKS into Kong JWT-plugin credentials (decK declarative YAML).

Kong's bundled `jwt` plugin cannot fetch a JWKS: it verifies with PEM public keys stored
as credentials of a consumer, looked up by a claim. With `key_claim_name: kid` the lookup
key is the token header's `kid`, so each keygate signing key becomes one credential.

    python3 jwks-to-kong.py https://keygate.example.com/.well-known/jwks.json > keygate-consumer.yaml
    deck gateway sync kong.yaml keygate-consumer.yaml     # (decK >= 1.28; older: deck sync -s …)

Run it after every `keygate signing-key rotate` (and again once the old key has left the
JWKS), e.g. from cron every minute. Standard library only.
"""

import base64
import json
import sys
import textwrap
import urllib.request

# DER SubjectPublicKeyInfo prefixes: everything before the raw key bytes.
P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def pem(jwk: dict) -> str:
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        der = P256_SPKI_PREFIX + b"\x04" + b64url(jwk["x"]) + b64url(jwk["y"])
    elif jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
        der = ED25519_SPKI_PREFIX + b64url(jwk["x"])
    else:
        raise SystemExit(f"unsupported key type in JWKS: {jwk.get('kty')}/{jwk.get('crv')}")
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} JWKS_URL")
    with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
        jwks = json.load(response)
    print('_format_version: "3.0"')
    print("consumers:")
    print("  - username: keygate")
    print("    jwt_secrets:")
    for jwk in jwks["keys"]:
        print(f"      - key: {json.dumps(jwk['kid'])}")
        print(f"        algorithm: {jwk['alg']}")
        print("        rsa_public_key: |")
        for line in pem(jwk).splitlines():
            print(f"          {line}")


if __name__ == "__main__":
    main()
