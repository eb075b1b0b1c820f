"""Signed commands: the canonical form, the key files, sequence numbers, the verifier's checks."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from gate.actions.controller import Verifier
from gate.actions.signing import KeyStore, KeyStoreError, canonical, read_key, seal, unseal

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
EXAMPLE = {  # the worked example of docs/security.md
    "action": "unlock", "actor": None, "distance": 0.41, "door": "front", "event_id": 812,
    "expires_at": 1795898873.76, "issued_at": 1795898871.86,
    "nonce": "5f0c8d2e9b7a41c3a8e6d0f4b2c19e77", "person": "alice", "person_id": 3,
    "reason": "granted", "seq": 1795898871, "type": "command",
}  # fmt: skip


def test_canonical_form_and_signature_match_the_documented_example():
    from tests.conftest import ROOT

    body = canonical(EXAMPLE)
    assert body.startswith(b'{"action":"unlock","actor":null,"distance":0.41,"door":"front"')
    assert b" " not in body
    payload = seal(EXAMPLE, KEY)
    assert payload[: len(body) - 1] == body[:-1]  # the signature goes in before the last brace
    assert unseal(payload) == (body, json.loads(payload)["sig"])
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    assert KEY in doc and payload.decode() in doc, "docs/security.md shows this exact message"
    assert unseal(body) is None  # unsigned
    assert unseal(payload[:-3] + b'X"}') is None  # a signature that is not hex


def test_key_files_are_private_and_rotation_replaces_the_key(tmp_path):
    store = KeyStore(tmp_path / "data" / "keys")
    with pytest.raises(KeyStoreError, match="has no key yet"):
        store.key("front")
    key = store.key("front", create=True)
    assert len(key) == 64 and store.key("front") == key
    assert stat.S_IMODE(os.stat(store.folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path("front")).st_mode) == 0o600
    assert store.rotate("front") != key and store.key("front") != key
    assert stat.S_IMODE(os.stat(store.path("front")).st_mode) == 0o600
    assert store.path("../etc").parent == store.folder  # a door name never leaves the folder
    assert store.path("..").name == "%2E..key"

    os.chmod(store.path("front"), 0o644)
    with pytest.raises(KeyStoreError, match="others may read this key"):
        store.key("front")
    store.path("front").write_text("not a key\n")
    os.chmod(store.path("front"), 0o600)
    with pytest.raises(KeyStoreError, match="not a gate key"):
        read_key(store.path("front"))


def test_sequence_numbers_rise_across_restarts_and_threads(tmp_path):
    folder = tmp_path / "keys"
    first = KeyStore(folder).next_seq("front")
    after_restart = KeyStore(folder).next_seq("front")
    assert after_restart > first
    (folder / "front.seq").write_text(f"{after_restart + 10**9}\n")  # a clock that went back
    assert KeyStore(folder).next_seq("front") == after_restart + 10**9 + 1

    seen: list[int] = []
    lock = threading.Lock()

    def sign_many() -> None:
        store = KeyStore(folder)  # each thread its own store, as two processes would have
        for _ in range(25):
            seq = store.next_seq("front")
            with lock:
                seen.append(seq)

    threads = [threading.Thread(target=sign_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 100 and min(seen) > after_restart + 10**9 + 1


def command(now: float, **changes) -> dict:
    fields = {"type": "command", "action": "unlock", "door": "front", "issued_at": now,
              "expires_at": now + 2, "seq": 10, "nonce": "ab" * 16}  # fmt: skip
    return {**fields, **changes}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"door": "back"}, "wrong_door"),
        ({"type": "state"}, "malformed"),
        ({"action": "explode"}, "malformed"),
        ({"seq": True}, "malformed"),
        ({"nonce": "x"}, "malformed"),
        ({"expires_at": None}, "malformed"),
        ({"expires_at": 1000.0 + 86400}, "too_long"),  # the 24 h forgery, even if signed
        ({"issued_at": 1000.0 + 60, "expires_at": 1000.0 + 61}, "future"),
        ({"expires_at": 1000.0}, "expired"),
    ],
)
def test_verifier_refuses_what_a_controller_must_not_obey(changes, reason):
    verifier = Verifier("front", KEY, clock=lambda: 1000.0)
    verdict = verifier.check(seal(command(1000.0, **changes), KEY))
    assert (verdict.accepted, verdict.reason) == (False, reason)
    assert verifier.last_seq == 0  # a refusal changes nothing
    assert verifier.check(seal(command(1000.0), KEY)).accepted


def test_verifier_order_of_sequence_numbers_and_nonces():
    verifier = Verifier("front", KEY, clock=lambda: 1000.0)
    assert verifier.check(seal(command(1000.0, seq=10), KEY)).accepted
    again = verifier.check(seal(command(1000.0, seq=10), KEY))
    assert again.reason == "replayed"
    older = verifier.check(seal(command(1000.0, seq=9, nonce="cd" * 16), KEY))
    assert older.reason == "out_of_order"
    same_seq = verifier.check(seal(command(1000.0, seq=10, nonce="ef" * 16), KEY))
    assert same_seq.reason == "out_of_order"
    assert verifier.check(seal(command(1000.0, seq=11, nonce="12" * 16), KEY)).accepted
    wrong_key = verifier.check(seal(command(1000.0, seq=12, nonce="34" * 16), "f" * 64))
    assert wrong_key.reason == "bad_signature" and wrong_key.fields["seq"] == 12  # as claimed
    assert verifier.last_seq == 11
