#!/usr/bin/env python3
"""Writes the seed corpus of the rtp_parse fuzz target: fuzz/corpus/rtp_parse/*.bin.

RTP (PCMU, CSRCs, header extension, padding), RFC 4733 telephone-events, RTCP SR, RR, SDES,
BYE and a compound packet, SRTP and SRTCP protected under the target's RX_KEY (RFC 3711
AES_CM_128_HMAC_SHA1_80, done here by hand with the `cryptography` package), and a few
malformed packets. Run from the repository root: python3 fuzz/seed_rtp.py
"""
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "rtp_parse")
RX_KEY = bytes(range(30))  # fuzz_targets/rtp_parse.rs RX_KEY: master key 0..16, salt 16..30


def aes_cm(key, iv16, data):
    enc = Cipher(algorithms.AES(key), modes.CTR(iv16)).encryptor()
    return enc.update(data) + enc.finalize()


def kdf(master, label, length):
    """RFC 3711 §4.3.1 with key derivation rate 0: x = label<<48 XOR salt, AES-CM(x*2^16)."""
    key, salt = master[:16], master[16:]
    x = int.from_bytes(salt, "big") ^ (label << 48)
    return aes_cm(key, (x << 16).to_bytes(16, "big"), bytes(length))


def iv(salt, ssrc, index):
    v = (int.from_bytes(salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
    return v.to_bytes(16, "big")


def srtp(packet, roc=0):
    ek, ak, salt = kdf(RX_KEY, 0, 16), kdf(RX_KEY, 1, 20), kdf(RX_KEY, 2, 14)
    cc = packet[0] & 0x0F
    start = 12 + 4 * cc
    if packet[0] & 0x10:
        start += 4 + 4 * struct.unpack(">H", packet[start + 2 : start + 4])[0]
    seq, ssrc = struct.unpack(">H", packet[2:4])[0], struct.unpack(">I", packet[8:12])[0]
    body = packet[:start] + aes_cm(ek, iv(salt, ssrc, (roc << 16) | seq), packet[start:])
    tag = hmac.new(ak, body + struct.pack(">I", roc), hashlib.sha1).digest()[:10]
    return body + tag


def srtcp(packet, index=1):
    ek, ak, salt = kdf(RX_KEY, 3, 16), kdf(RX_KEY, 4, 20), kdf(RX_KEY, 5, 14)
    ssrc = struct.unpack(">I", packet[4:8])[0]
    body = packet[:8] + aes_cm(ek, iv(salt, ssrc, index), packet[8:]) + struct.pack(">I", 0x80000000 | index)
    return body + hmac.new(ak, body, hashlib.sha1).digest()[:10]


def rtp(pt=0, seq=1, ts=160, ssrc=0x1234, payload=bytes(160), marker=False, csrcs=(), ext=None, pad=0):
    b0 = 0x80 | len(csrcs) | (0x10 if ext is not None else 0) | (0x20 if pad else 0)
    out = struct.pack(">BBHII", b0, pt | (0x80 if marker else 0), seq, ts, ssrc)
    out += b"".join(struct.pack(">I", c) for c in csrcs)
    if ext is not None:
        words = (len(ext) + 3) // 4
        out += struct.pack(">HH", 0xBEDE, words) + ext.ljust(words * 4, b"\0")
    out += payload
    if pad:
        out += bytes(pad - 1) + bytes([pad])
    return out


def rtcp(pt, count, body):
    length = (4 + len(body)) // 4 - 1
    return struct.pack(">BBH", 0x80 | count, pt, length) + body


def sr(ssrc=0x1234):
    return rtcp(200, 0, struct.pack(">IIIIII", ssrc, 0xE1234567, 0x89ABCDEF, 16000, 100, 17200))


def rr(ssrc=0x5678):
    block = struct.pack(">IIIIII", 0x1234, 0x00000003, 1000, 12, 0, 0)
    return rtcp(201, 1, struct.pack(">I", ssrc) + block)


def sdes(ssrc=0x1234):
    item = b"\x01\x0bcallveil@fz" + b"\0"
    chunk = struct.pack(">I", ssrc) + item
    return rtcp(202, 1, chunk.ljust((len(chunk) + 3) // 4 * 4, b"\0"))


def bye(ssrc=0x1234):
    reason = b"\x04done"
    return rtcp(203, 1, struct.pack(">I", ssrc) + reason.ljust(8, b"\0"))


def event(digit, end, duration, seq):
    return rtp(pt=101, seq=seq, ts=8000, payload=struct.pack(">BBH", digit, (0x80 if end else 0) | 10, duration),
               marker=not end and duration == 160)


SEEDS = {
    "rtp_pcmu": rtp(),
    "rtp_pcma_marker": rtp(pt=8, seq=65535, ts=0xFFFFFF60, marker=True, payload=bytes([0xD5]) * 160),
    "rtp_csrc_ext_pad": rtp(seq=7, csrcs=(1, 2), ext=b"\x10\xAA", pad=4, payload=bytes(range(80))),
    "rtp_mux_first_byte_odd": rtp(csrcs=(9,), payload=bytes(20)),
    "te_start_5": event(5, False, 160, 10),
    "te_end_5": event(5, True, 1280, 12),
    "te_end_star": event(10, True, 800, 20),
    "rtcp_sr": sr(),
    "rtcp_rr": rr(),
    "rtcp_bye": bye(),
    "rtcp_compound_sr_sdes_bye": sr() + sdes() + bye(),
    "rtcp_compound_rr_sdes": rr() + sdes(0x5678),
    "srtp_pcmu": srtp(rtp(seq=1)),
    "srtp_pcmu_seq2": srtp(rtp(seq=2, ts=320)),
    "srtp_ext": srtp(rtp(seq=3, ext=b"\x10\x01\x02", payload=bytes(range(160)))),
    "srtp_te_end_1": srtp(event(1, True, 800, 4)),
    "srtcp_sr": srtcp(sr()),
    "srtcp_compound": srtcp(sr() + sdes() + bye(), index=2),
    "bad_short": bytes([0x80, 0x00, 0x00]),
    "bad_version": bytes([0x40]) + rtp()[1:],
    "bad_padding": rtp(payload=bytes(4))[:-1] + b"\xff",
    "bad_rtcp_length": rtcp(200, 0, bytes(24))[:4] + bytes(8),
    "bad_ext_length": rtp(ext=b"")[:14] + b"\xff\xff",
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name + ".bin"), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {OUT}")


if __name__ == "__main__":
    main()
