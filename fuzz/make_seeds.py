#!/usr/bin/env python3
"""Writes the committed seed corpora of fuzz/model_files_fuzzer.cc,
fuzz/request_fuzzer.cc (each file: the selector byte the target reads first,
then the input) and fuzz/frame_fuzzer.cc (frames as a peer sends them) into
fuzz/corpus/. Run from the repository root:

    python3 fuzz/make_seeds.py
"""
import glob
import json
import os
import struct


def write(folder, name, selector, payload):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(bytes([selector]) + payload)


def safetensors(tensors):
    """tensors: [(name, dtype, shape, raw bytes)] -> the file's bytes."""
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(number, wire_type, payload):
    key = varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def main():
    m = "fuzz/corpus/model_files"
    f32 = struct.pack("<4f", 1, 2, 3, 4)
    write(m, "two_tensors", 0, safetensors([("a.weight", "F32", [2, 2], f32), ("b", "BF16", [3], b"\0\x3f" * 3)]))
    write(m, "empty_tensor", 0, safetensors([("e", "F16", [0, 4], b"")]))
    write(m, "truncated", 0, safetensors([("a", "F32", [2, 2], f32)])[:-5])
    write(m, "metadata", 0, safetensors([("a", "I64", [1], b"\1" + b"\0" * 7)]).replace(b"{", b'{"__metadata__": {"format": "pt"}, ', 1))
    for path in sorted(glob.glob("tests/fixtures/*/config.json"))[:6] + ["models/fortune-moe/config.json"]:
        with open(path, "rb") as f:
            write(m, "config_" + path.split("/")[-2], 1, f.read())

    r = "fuzz/corpus/request"
    generate = field(2, 2, b"Life is") + field(6, 0, varint(16)) + field(7, 2, b"\n")
    write(r, "generate_text", 0, generate)
    write(r, "generate_ids", 0, field(3, 2, field(1, 2, varint(1) + varint(2) + varint(3))) + field(6, 0, varint(4)))
    write(r, "completion", 4, json.dumps({"prompt": "Life is", "max_tokens": 8, "temperature": 0.5, "n": 2,
                                          "stop": ["\n"], "logprobs": 2, "stream": True,
                                          "stream_options": {"include_usage": True}}).encode())
    write(r, "completion_ids", 4, json.dumps({"prompt": [1, 2, 3], "echo": True, "seed": 7}).encode())
    write(r, "chat", 6, json.dumps({"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "1"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "logprobs": True, "top_logprobs": 2, "chat_template_kwargs": {"enable_thinking": False}}).encode())
    tensor = field(1, 2, b"text_input") + field(2, 2, b"BYTES") + field(3, 2, varint(1)) + \
        field(5, 2, field(8, 2, b"Life is"))
    params = field(1, 2, b"sampling_parameters") + field(2, 2, b"BYTES") + field(3, 2, varint(1)) + \
        field(5, 2, field(8, 2, b'{"max_tokens": 4}'))
    write(r, "oip_infer", 8, field(1, 2, b"fortune-moe") + field(5, 2, tensor) + field(5, 2, params))
    raw = field(1, 2, b"text_input") + field(2, 2, b"BYTES") + field(3, 2, varint(1))
    write(r, "oip_raw", 8, field(5, 2, raw) + field(7, 2, struct.pack("<I", 2) + b"hi"))

    # Frames: "MMF1", the header's length (u32), the payload's (u64), then both.
    def frame(header, payload):
        return b"MMF1" + struct.pack("<IQ", len(header), len(payload)) + header + payload
    f = "fuzz/corpus/frame"
    os.makedirs(f, exist_ok=True)
    dispatch = field(1, 0, varint(3)) + field(2, 0, varint(1))  # step 3, layer 1
    rows = struct.pack("<8f", *range(8))
    with open(os.path.join(f, "two_frames"), "wb") as out:
        out.write(frame(dispatch, rows) + frame(dispatch, b""))
    # Rows as a worker widens them: [2, 4] F32 in the payload, the same in
    # BF16, and in FP8 (F8_E4M3 codes) with their scales ([2, 1] F32) in the
    # header.
    def tensor(dtype, shape, data=b""):
        t = field(1, 0, varint(dtype)) + field(2, 2, b"".join(varint(d) for d in shape))
        return t + (field(3, 2, data) if data else b"")
    for name, dtype, payload, scales in [
            ("rows_f32", 1, rows, b""),
            ("rows_bf16", 3, struct.pack("<8H", *[0x3F80 + i for i in range(8)]), b""),
            ("rows_fp8", 7, bytes(range(0x30, 0x38)), tensor(1, [2, 1], struct.pack("<2f", 0.5, 2.0)))]:
        header = dispatch + field(4, 2, tensor(dtype, [2, 4])) + (field(9, 2, scales) if scales else b"")
        with open(os.path.join(f, name), "wb") as out:
            out.write(frame(header, payload))
    with open(os.path.join(f, "announces_much"), "wb") as out:
        out.write(b"MMF1" + struct.pack("<IQ", 4, 1 << 28) + b"\0" * 40)
    with open(os.path.join(f, "bad_magic"), "wb") as out:
        out.write(b"XXXX" + struct.pack("<IQ", 0, 0))


if __name__ == "__main__":
    main()
