"""Drives a booted teegate sidecar through dstack's official Python SDK (dstack-sdk 0.5.4),
as an app written for dstack would, and checks every answer. Run by tests/dstack_sdk.rs:

    sdk_check.py <dstack socket> <app id hex> <compose hash hex> <KMS k256 root public key hex> <KMS root CA PEM file>

Prints one JSON object (the TLS chain and a quote, for the Rust side to verify as RA-TLS)
and exits 0 when every check held; any failed check raises and exits non-zero.
"""

import json
import socket
import ssl
import sys
import tempfile
import threading
import time

import httpx
from dstack_sdk import DstackClient
from eth_keys import keys
from eth_utils import keccak

SOCK, APP_ID, COMPOSE_HASH, KMS_K256, KMS_ROOT_CA = sys.argv[1:6]
client = DstackClient(SOCK)

# TDX quote v4: 48-byte header, then the TD report; RTMR3 and report data at these offsets.
RTMR3 = slice(48 + 472, 48 + 520)
REPORT_DATA = slice(48 + 520, 48 + 584)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_status(status, method, body):
    """Raw calls for input the SDK itself would refuse before sending."""
    transport = httpx.HTTPTransport(uds=SOCK)
    with httpx.Client(transport=transport, base_url="http://localhost") as raw:
        r = raw.post("/" + method, content=body, headers={"Content-Type": "application/json"})
    check(r.status_code == status, f"{method} {body[:60]!r}: {r.status_code} {r.text}, wanted {status}")
    check("error" in r.json(), f"{method}: no error message in {r.text}")


out = {}

# Info and Version: the SDK parses tcb_info into its TcbInfoV05x model.
info = client.info()
check(info.app_id == APP_ID, f"app id {info.app_id} != {APP_ID}")
check(info.compose_hash == COMPOSE_HASH, "compose hash")
check(info.tcb_info.compose_hash == COMPOSE_HASH, "tcb_info.compose_hash")
check(info.app_name == "dstack-sdk-app", f"app name {info.app_name}")
check(json.loads(info.key_provider_info)["name"] == "kms", info.key_provider_info)
check(client.version().version, "version")
check(client.is_reachable(), "reachable")

# GetQuote: report data as asked, RTMR3 as the SDK's own replay of the returned log.
asked = b"teegate-sdk-check"
q = client.get_quote(asked)
quote = q.decode_quote()
check(quote[REPORT_DATA] == asked.ljust(64, b"\0"), "quote report data")
check(q.report_data == asked.ljust(64, b"\0").hex(), "report_data field")
rtmrs = q.replay_rtmrs()
check(rtmrs[3] == quote[RTMR3].hex(), f"replayed RTMR3 {rtmrs[3]} != quoted {quote[RTMR3].hex()}")
events = q.decode_event_log()
names = [e.event for e in events]
check(names[:4] == ["compose-hash", "app-id", "instance-id", "key-provider"], f"boot events {names}")
check(bytes.fromhex(events[0].event_payload).hex() == COMPOSE_HASH, "compose-hash payload")
check(bytes.fromhex(events[1].event_payload).hex() == APP_ID, "app-id payload")
check(info.tcb_info.rtmr3 == quote[RTMR3].hex(), "Info's RTMR3")
out["quote"] = q.quote
out["report_data"] = q.report_data

# GetKey: stable per path and purpose; the key follows the path; the chain ends at the KMS.
def recover(message, sig):
    return keys.Signature(signature_bytes=sig).recover_public_key_from_msg_hash(keccak(message))


def chain_root(resp, purpose, public):
    c = resp.decode_signature_chain()
    check(len(c) == 2, "chain length")
    app_root = recover(f"{purpose}:{public.hex()}".encode(), c[0])
    kms = recover(b"dstack-kms-issued:" + bytes.fromhex(APP_ID) + app_root.to_compressed_bytes(), c[1])
    return app_root, kms.to_compressed_bytes().hex()


k1 = client.get_key("wallet/eth", "signing")
k2 = client.get_key("wallet/eth", "signing")
check(k1.key == k2.key and k1.signature_chain == k2.signature_chain, "GetKey stable")
other_path = client.get_key("wallet/btc", "signing")
check(other_path.key != k1.key, "another path gives another key")
other_purpose = client.get_key("wallet/eth", "encryption")
check(other_purpose.signature_chain[0] != k1.signature_chain[0], "the purpose is bound by the chain")
public = keys.PrivateKey(k1.decode_key()).public_key.to_compressed_bytes()
app_root, kms = chain_root(k1, "signing", public)
check(kms == KMS_K256, f"chain ends at {kms}, not the KMS k256 root {KMS_K256}")
app_root2, _ = chain_root(other_path, "signing", keys.PrivateKey(other_path.decode_key()).public_key.to_compressed_bytes())
check(app_root == app_root2, "one app root key")
# A forged purpose does not verify against the chain's app root.
check(recover(f"forged:{public.hex()}".encode(), k1.decode_signature_chain()[0]) != app_root, "forged purpose")
ed = client.get_key("wallet/sol", "signing", algorithm="ed25519")
check(len(ed.decode_key()) == 32 and ed.key != k1.key, "ed25519 key")

# Sign / Verify round trip, both algorithms.
for alg in ["secp256k1", "ed25519"]:
    s = client.sign(alg, b"hello dstack")
    check(client.verify(alg, b"hello dstack", s.decode_signature(), s.decode_public_key()).valid, f"{alg} verifies")
    check(not client.verify(alg, b"hello dstack!", s.decode_signature(), s.decode_public_key()).valid, f"{alg} wrong data")
    check(len(s.signature_chain) == 3, "sign chain")

# Attest: an attestation over the report data.
att = json.loads(client.attest(b"attest-me").decode_attestation())
check(bytes.fromhex(att["quote"])[REPORT_DATA] == b"attest-me".ljust(64, b"\0"), "attest report data")

# GetTlsKey: the key and chain (ending at the app CA) complete a TLS handshake whose client
# trusts only the KMS root CA.
tls = client.get_tls_key(
    subject="sdk.teegate.test",
    alt_names=["sdk.teegate.test"],
    usage_ra_tls=True,
    usage_server_auth=True,
    usage_client_auth=False,
    not_after=int(time.time()) + 3600,
    with_app_info=True,
)
check(len(tls.certificate_chain) == 2, "leaf and app CA")
with tempfile.NamedTemporaryFile("w", suffix=".pem") as chain_file, tempfile.NamedTemporaryFile("w", suffix=".pem") as key_file:
    chain_file.write("".join(tls.certificate_chain))
    chain_file.flush()
    key_file.write(tls.key)
    key_file.flush()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(chain_file.name, key_file.name)
    client_ctx = ssl.create_default_context(cafile=KMS_ROOT_CA)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as s:
            s.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client_ctx.wrap_socket(raw, server_hostname="sdk.teegate.test") as s:
            check(s.recv(2) == b"ok", "TLS data")
    t.join()
    listener.close()
out["tls_chain"] = tls.certificate_chain
out["tls_key_der_len"] = len(tls.as_uint8array())

# EmitEvent: an app event extends RTMR3 (the replay still matches); boot names are refused.
client.emit_event("app-ready", "v1")
try:
    client.emit_event("compose-hash", "00" * 32)
    raise AssertionError("a second compose-hash was accepted")
except httpx.HTTPStatusError as e:
    check(e.response.status_code == 403, f"forged compose-hash: {e.response.status_code}")
q2 = client.get_quote(b"after")
check(q2.replay_rtmrs()[3] == q2.decode_quote()[RTMR3].hex(), "replay after EmitEvent")
ev = q2.decode_event_log()
check([e.event for e in ev].count("compose-hash") == 1 and ev[-1].event == "app-ready", "one compose-hash, then app-ready")

# Bad input: the 4xx the SDK raises as HTTPStatusError.
expect_status(400, "GetQuote", json.dumps({"report_data": "00" * 65}))
expect_status(400, "GetQuote", json.dumps({"report_data": "xyz"}))
expect_status(400, "Attest", json.dumps({"report_data": "00" * 65}))
expect_status(413, "GetQuote", json.dumps({"report_data": "00" * 40000}))
expect_status(400, "GetQuote", "{not json")
try:
    client.get_key("x", "y", algorithm="rsa")
    raise AssertionError("algorithm rsa was accepted")
except httpx.HTTPStatusError as e:
    check(e.response.status_code == 400, f"unknown algorithm: {e.response.status_code}")
try:
    client.get_quote(b"x" * 65)
    raise AssertionError("the SDK sent 65 bytes of report data")
except ValueError:
    pass

out["ok"] = True
print(json.dumps(out))
