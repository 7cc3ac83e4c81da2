#!/usr/bin/env python3
"""Convert an OpenAI Whisper model from CTranslate2 format to whisper.cpp's legacy ggml format.

No model hub ships a ggml Whisper file, but PyPI ships CTranslate2 exports (see
scripts/provision-model). This script reads such an export -- `model.bin` (possibly split into
parts, given in order), `vocabulary.txt` -- plus the mel filter bank from the openai-whisper sdist,
and writes the layout that whisper.cpp's `models/convert-pt-to-ggml.py` writes, tensors in
openai/whisper's state_dict order. The output is deterministic, so it is pinned by sha256.

It does not download, verify or install anything, and it supports only float16/float32 exports
(not int8-quantized ones). Needs python3 and numpy.
"""

import argparse
import struct
import sys

import numpy as np

GGML_MAGIC = 0x67676D6C
GGML_VOCAB = 50257
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 (bf16) unsupported


class ConvertError(Exception):
    pass


class Reader:
    """Little-endian cursor over the model bytes; every read is bounds-checked."""

    def __init__(self, data):
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise ConvertError(f"model.bin truncated at byte {self.pos} (wanted {n} more)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self):
        # CTranslate2 strings carry a u16 length that counts the trailing NUL.
        (n,) = self.unpack("H")
        return bytes(self.take(n)).rstrip(b"\0").decode("utf-8")


def read_ct2(data):
    """Return {name: ndarray} for every variable of a CTranslate2 WhisperSpec model.bin."""
    r = Reader(data)
    (version,) = r.unpack("I")
    if version < 5:
        raise ConvertError(f"unsupported CTranslate2 model.bin version {version} (need >= 5)")
    spec = r.string()
    if spec != "WhisperSpec":
        raise ConvertError(f"model.bin holds a {spec!r}, not a WhisperSpec")
    r.unpack("I")  # spec revision: the variable names below are what we rely on
    (count,) = r.unpack("I")
    variables = {}
    for _ in range(count):
        name = r.string()
        (rank,) = r.unpack("B")
        shape = r.unpack(f"{rank}I")
        (dtype_id,) = r.unpack("B")
        (nbytes,) = r.unpack("I")
        raw = r.take(nbytes)
        dtype = CT2_DTYPES.get(dtype_id)
        if dtype is None:
            raise ConvertError(f"{name}: unsupported dtype id {dtype_id}")
        if nbytes != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise ConvertError(f"{name}: {nbytes} bytes do not fit shape {shape}")
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    (aliases,) = r.unpack("I")
    for _ in range(aliases):
        alias, target = r.string(), r.string()
        if target in variables:
            variables[alias] = variables[target]
    if r.pos != len(r.data):
        raise ConvertError(f"{len(r.data) - r.pos} trailing bytes after model.bin (wrong part order?)")
    return variables


def byte_decoder():
    """Inverse of GPT-2's bytes_to_unicode(): maps each printable stand-in character to its byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + shifted
            shifted += 1
    return {chr(c): b for b, c in chars.items()}


def read_vocab(path):
    """The first 50257 token byte strings, as in the official ggml files.

    whisper.cpp synthesises the special tokens itself; the official files hold the 50257 entries
    of the GPT-2 vocab.json they were made from. For the English-only tokenizer that is its 50256
    BPE ranks plus "<|endoftext|>"; for the multilingual one its 50257 ranks (the last is empty).
    """
    decode = byte_decoder()
    with open(path, encoding="utf-8") as f:
        # split on "\n" only: str.splitlines() would also split on characters BPE tokens may hold.
        lines = f.read().split("\n")
    if len(lines) < GGML_VOCAB:
        raise ConvertError(f"{path}: {len(lines)} tokens, a Whisper vocabulary has more than {GGML_VOCAB}")
    tokens = []
    for i, tok in enumerate(lines[:GGML_VOCAB]):
        try:
            tokens.append(bytes(decode[c] for c in tok))
        except KeyError as e:
            raise ConvertError(f"{path}:{i + 1}: character {e} is not byte-level BPE") from None
    return tokens


def ggml_tensors(v, n_audio_layer, n_text_layer):
    """Yield (openai name, array) in the order of openai/whisper's state_dict.

    CTranslate2 fuses q/k/v (self-attention) and k/v (cross-attention) into one matrix; split them
    back. Whisper's key projections have no bias: CTranslate2's fused key-bias slice is zero and
    is dropped.
    """

    def attention(prefix, ct2, fused_qkv):
        w, b = v[f"{ct2}/linear_0/weight"], v[f"{ct2}/linear_0/bias"]
        if fused_qkv:
            q_w, k_w, val_w = np.split(w, 3)
            q_b, k_b, val_b = np.split(b, 3)
            out = f"{ct2}/linear_1"
        else:  # cross-attention: linear_0 is the query, linear_1 the fused key/value
            q_w, q_b = w, b
            k_w, val_w = np.split(v[f"{ct2}/linear_1/weight"], 2)
            k_b, val_b = np.split(v[f"{ct2}/linear_1/bias"], 2)
            out = f"{ct2}/linear_2"
        if np.any(k_b):
            raise ConvertError(f"{ct2}: non-zero key bias cannot be represented in ggml Whisper")
        yield f"{prefix}.query.weight", q_w
        yield f"{prefix}.query.bias", q_b
        yield f"{prefix}.key.weight", k_w
        yield f"{prefix}.value.weight", val_w
        yield f"{prefix}.value.bias", val_b
        yield f"{prefix}.out.weight", v[f"{out}/weight"]
        yield f"{prefix}.out.bias", v[f"{out}/bias"]
        yield f"{prefix}_ln.weight", v[f"{ct2}/layer_norm/gamma"]
        yield f"{prefix}_ln.bias", v[f"{ct2}/layer_norm/beta"]

    def block(side, i, cross):
        p, c = f"{side}.blocks.{i}", f"{side}/layer_{i}"
        yield from attention(f"{p}.attn", f"{c}/self_attention", True)
        if cross:
            yield from attention(f"{p}.cross_attn", f"{c}/attention", False)
        yield f"{p}.mlp.0.weight", v[f"{c}/ffn/linear_0/weight"]
        yield f"{p}.mlp.0.bias", v[f"{c}/ffn/linear_0/bias"]
        yield f"{p}.mlp.2.weight", v[f"{c}/ffn/linear_1/weight"]
        yield f"{p}.mlp.2.bias", v[f"{c}/ffn/linear_1/bias"]
        yield f"{p}.mlp_ln.weight", v[f"{c}/ffn/layer_norm/gamma"]
        yield f"{p}.mlp_ln.bias", v[f"{c}/ffn/layer_norm/beta"]

    yield "encoder.positional_embedding", v["encoder/position_encodings/encodings"]
    for n in ("conv1", "conv2"):
        yield f"encoder.{n}.weight", v[f"encoder/{n}/weight"]
        yield f"encoder.{n}.bias", v[f"encoder/{n}/bias"]
    for i in range(n_audio_layer):
        yield from block("encoder", i, cross=False)
    yield "encoder.ln_post.weight", v["encoder/layer_norm/gamma"]
    yield "encoder.ln_post.bias", v["encoder/layer_norm/beta"]
    yield "decoder.positional_embedding", v["decoder/position_encodings/encodings"]
    yield "decoder.token_embedding.weight", v["decoder/embeddings/weight"]
    for i in range(n_text_layer):
        yield from block("decoder", i, cross=True)
    yield "decoder.ln.weight", v["decoder/layer_norm/gamma"]
    yield "decoder.ln.bias", v["decoder/layer_norm/beta"]


def write_tensor(out, name, data):
    # Same precision rule as convert-pt-to-ggml.py: matrices in f16; vectors, conv biases
    # (stored as (n, 1)) and positional embeddings in f32, which ggml's kernels expect there.
    if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
        data = data.reshape(data.shape[0], 1)
    f32 = data.ndim < 2 or name.endswith(("conv1.bias", "conv2.bias", "positional_embedding"))
    data = data.astype("<f4" if f32 else "<f2")
    encoded = name.encode("utf-8")
    out.write(struct.pack("<iii", data.ndim, len(encoded), 0 if f32 else 1))
    out.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)))
    out.write(encoded)
    out.write(data.tobytes())


def count_layers(v, side):
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in v:
        n += 1
    return n


def convert(model_parts, vocab_path, mel_path, out_path):
    data = bytearray()
    for part in model_parts:
        with open(part, "rb") as f:
            data += f.read()
    v = read_ct2(data)
    tokens = read_vocab(vocab_path)
    with np.load(mel_path) as npz:
        mel = npz["mel_80"].astype(np.float32)
    try:
        n_audio_layer, n_text_layer = count_layers(v, "encoder"), count_layers(v, "decoder")
        conv1 = v["encoder/conv1/weight"]
        hparams = [
            v["decoder/embeddings/weight"].shape[0],  # n_vocab
            v["encoder/position_encodings/encodings"].shape[0],  # n_audio_ctx
            conv1.shape[0],  # n_audio_state
            int(v["encoder/num_heads"]),
            n_audio_layer,
            v["decoder/position_encodings/encodings"].shape[0],  # n_text_ctx
            v["decoder/embeddings/weight"].shape[1],  # n_text_state
            int(v["decoder/num_heads"]),
            n_text_layer,
            conv1.shape[1],  # n_mels
            1,  # ftype: f16
        ]
        if hparams[9] != mel.shape[0]:
            raise ConvertError(f"model wants {hparams[9]} mel bands, filter bank has {mel.shape[0]}")
        with open(out_path, "wb") as out:
            out.write(struct.pack("<12i", GGML_MAGIC, *hparams))
            out.write(struct.pack("<ii", *mel.shape))
            out.write(mel.astype("<f4").tobytes())
            out.write(struct.pack("<i", len(tokens)))
            out.writelines(struct.pack("<i", len(tok)) + tok for tok in tokens)
            for name, tensor in ggml_tensors(v, n_audio_layer, n_text_layer):
                write_tensor(out, name, tensor)
    except KeyError as e:
        raise ConvertError(f"model.bin lacks variable {e}") from None
    return hparams


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", nargs="+", required=True, help="model.bin, or its parts in order")
    ap.add_argument("--vocab", required=True, help="CTranslate2 vocabulary.txt")
    ap.add_argument("--mel", required=True, help="openai-whisper's whisper/assets/mel_filters.npz")
    ap.add_argument("--out", required=True, help="ggml file to write")
    args = ap.parse_args()
    try:
        hp = convert(args.model, args.vocab, args.mel, args.out)
    except (ConvertError, OSError, ValueError, IndexError, KeyError, struct.error) as e:
        print(f"ct2_to_ggml: {e}", file=sys.stderr)
        return 1
    print(f"ct2_to_ggml: n_vocab={hp[0]} audio={hp[4]}x{hp[2]} text={hp[8]}x{hp[6]} -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
