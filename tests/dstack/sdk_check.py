"""Drives a booted teegate sidecar through dstack's official Python SDK (dstack-sdk 0.5.4),
as an app written for dstack would, and checks every answer. Run by tests/dstack_sdk.rs:

    sdk_check.py <dstack socket> <app id hex> <compose hash hex> <KMS k256 root public key hex> <KMS root CA PEM file>

Prints one JSON object (the TLS chain and a quote, for the Rust side to verify as RA-TLS)
and exits 0 when every check held; any failed check raises and exits non-zero.
"""

import hashlib
import json
import socket
import ssl
import sys
import tempfile
import threading
import time

import httpx
from cryptography import x509
from dstack_sdk import DstackClient
from eth_keys import keys
from eth_utils import keccak

SOCK, APP_ID, COMPOSE_HASH, KMS_K256, KMS_ROOT_CA = sys.argv[1:6]
client = DstackClient(SOCK)

# TDX quote v4: 48-byte header, then the TD report; measurements at these offsets.
MRTD = slice(48 + 136, 48 + 184)
MR_CONFIG = slice(48 + 184, 48 + 328)  # MRCONFIGID, MROWNER, MROWNERCONFIG
RTMR = [slice(48 + 328 + 48 * i, 48 + 376 + 48 * i) for i in range(4)]
RTMR3 = RTMR[3]
REPORT_DATA = slice(48 + 520, 48 + 584)
RUNTIME_EVENT = 0x08000001


def v1_digest(name, payload):
    """dstack's V1 runtime-event digest."""
    return hashlib.sha384(RUNTIME_EVENT.to_bytes(4, "little") + b":" + name.encode() + b":" + payload).digest()


class Scale:
    """A SCALE reader for dstack's VersionedAttestation (written apart from teegate's encoder)."""

    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, n):
        check(self.at + n <= len(self.data), "attestation truncated")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def u32(self):
        return int.from_bytes(self.take(4), "little")

    def compact(self):
        mode = self.data[self.at] & 3
        if mode == 3:
            n = (self.take(1)[0] >> 2) + 4
            return int.from_bytes(self.take(n), "little")
        return int.from_bytes(self.take([1, 2, 4][mode]), "little") >> 2

    def bytes(self):
        return self.take(self.compact())


def decode_attestation(data):
    r = Scale(data)
    check(r.take(2) == b"\0\0", "VersionedAttestation::V0 of AttestationQuote::DstackTdx")
    quote = r.bytes()
    events = [
        {"imr": r.u32(), "event_type": r.u32(), "digest": r.bytes(), "event": r.bytes().decode(), "payload": r.bytes()}
        for _ in range(r.compact())
    ]
    runtime = [(r.bytes().decode(), r.bytes()) for _ in range(r.compact())]
    report_data = r.take(64)
    config = r.bytes().decode()
    check(r.at == len(data), "trailing bytes after the attestation")
    return quote, events, runtime, report_data, config


def der_items(data):
    """(tag, value) of each DER item in `data`."""
    at, out = 0, []
    while at < len(data):
        tag, n = data[at], data[at + 1]
        at += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(data[at : at + k], "big")
            at += k
        out.append((tag, data[at : at + n]))
        at += n
    return out


def ppid(quote):
    """The PPID in the Intel SGX extension of the PCK certificate the quote carries."""
    pem = quote[quote.index(b"-----BEGIN CERTIFICATE-----") :]
    leaf = x509.load_pem_x509_certificate(pem[: pem.index(b"-----END CERTIFICATE-----") + 25])
    sgx = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.2.840.113741.1.13.1")).value.value
    ppid_oid = bytes.fromhex("2a864886f84d010d0101")  # 1.2.840.113741.1.13.1.1
    for _, entry in der_items(der_items(sgx)[0][1]):
        (oid_tag, oid), (_, value) = der_items(entry)[:2]
        if oid == ppid_oid:
            return value
    raise AssertionError("no PPID in the PCK certificate")


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

# Info's platform values, as dstack computes them (dstack-attest's decode_app_info).
mr = [quote[MRTD]] + [quote[s] for s in RTMR]
extra = [quote[MR_CONFIG]] if any(quote[MR_CONFIG]) else []
check(info.os_image_hash == hashlib.sha256(b"".join(mr[:4])).hexdigest(), "os_image_hash = SHA-256(MRTD, RTMR0-2)")
check(info.tcb_info.os_image_hash == info.os_image_hash, "tcb_info.os_image_hash")
# mr_aggregated moves with RTMR3; recompute it from a quote taken after Info.
q_now = client.get_quote(b"now")
now_q = q_now.decode_quote()
info_now = client.info()
mr_now = [now_q[MRTD]] + [now_q[s] for s in RTMR]
check(info_now.mr_aggregated == hashlib.sha256(b"".join(mr_now + extra)).hexdigest(), "mr_aggregated")
check(info.device_id == hashlib.sha256(ppid(quote)).hexdigest(), "device_id = SHA-256(PPID)")
check(info.device_id != hashlib.sha256(b"").hexdigest(), "a device id, not the hash of nothing")
vm = json.loads(info.vm_config)
check(vm["os_image_hash"] == info.os_image_hash and vm["cpu_count"] > 0, f"vm_config {vm}")
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

# Attest: dstack's VersionedAttestation (SCALE), decoded here: the quote over the report
# data, an event log whose runtime events replay to the quote's RTMR3, the report data, and
# the vm_config Info reports.
att_quote, att_events, att_runtime, att_rd, att_config = decode_attestation(client.attest(b"attest-me").decode_attestation())
check(att_quote[REPORT_DATA] == b"attest-me".ljust(64, b"\0"), "attest quote report data")
check(att_rd == b"attest-me".ljust(64, b"\0"), "attest report_data field")
mr3 = bytes(48)
for e, (name, payload) in zip(att_events, att_runtime):
    check((e["imr"], e["event_type"], e["event"], e["payload"]) == (3, RUNTIME_EVENT, name, payload), f"event {e['event']}")
    check(e["digest"] == v1_digest(name, payload), f"digest of {name}")
    mr3 = hashlib.sha384(mr3 + e["digest"]).digest()
check(len(att_events) == len(att_runtime) and mr3 == att_quote[RTMR3], "attestation events replay to the quoted RTMR3")
check([n for n, _ in att_runtime][:2] == ["compose-hash", "app-id"], "boot events in the attestation")
check(json.loads(att_config)["os_image_hash"] == info.os_image_hash, "attestation config is Info's vm_config")

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

# A not_before in the future: the certificate is valid from then, as in dstack; past the
# bound (90 days) it is refused with a 400 naming the field.
later = int(time.time()) + 7 * 86400
tls_later = client.get_tls_key(subject="later.teegate.test", not_before=later, not_after=later + 3600)
leaf = x509.load_pem_x509_certificate(tls_later.certificate_chain[0].encode())
check(int(leaf.not_valid_before_utc.timestamp()) == later, f"not_before {leaf.not_valid_before_utc}")
check(int(leaf.not_valid_after_utc.timestamp()) == later + 3600, "not_after")
try:
    client.get_tls_key(subject="x.teegate.test", not_before=int(time.time()) + 91 * 86400)
    raise AssertionError("a not_before 91 days ahead was accepted")
except httpx.HTTPStatusError as e:
    check(e.response.status_code == 400 and "not_before" in e.response.text, e.response.text)
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
