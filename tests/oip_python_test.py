#!/usr/bin/python3
"""The Open Inference Protocol from Python's gRPC (Debian's python3-grpcio):
stubs generated from protos/inference/grpc_predict_v2.proto by protoc and
grpc_python_plugin, calling every v2 RPC of a mesh started by `moemesh up`.

    /usr/bin/python3 tests/oip_python_test.py MOEMESH_BIN     (from the repository root)
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import grpc


def generate_stubs(out):
    subprocess.run(["protoc", "--proto_path=protos", f"--python_out={out}", f"--grpc_python_out={out}",
                    "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
                    "inference/grpc_predict_v2.proto"], check=True)
    sys.path.insert(0, out)
    from inference import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as rpc
    return pb, rpc


def start_mesh(moemesh):
    up = subprocess.Popen([moemesh, "up", "--model=models/fortune-moe", "--expert-shards=1", "--kvcache=false"],
                          stdout=subprocess.PIPE, text=True)
    for line in up.stdout:
        if line.startswith("gateway listening on "):
            return up, line.split()[-1]
    raise RuntimeError("moemesh up did not start")


def raw_text(response):
    raw = response.raw_output_contents[0]
    (n,) = struct.unpack("<I", raw[:4])
    assert n == len(raw) - 4, (n, len(raw))
    return raw[4:].decode()


def bytes_input(pb, name, value):
    t = pb.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(value.encode())
    return t


def main():
    moemesh = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        pb, rpc = generate_stubs(tmp)
        up, address = start_mesh(moemesh)
        try:
            stub = rpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
            assert stub.ServerLive(pb.ServerLiveRequest()).live
            assert stub.ServerReady(pb.ServerReadyRequest()).ready
            assert stub.ModelReady(pb.ModelReadyRequest(name="fortune-moe")).ready
            assert not stub.ModelReady(pb.ModelReadyRequest(name="gpt-4")).ready
            assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "moemesh"
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="fortune-moe"))
            assert [i.name for i in meta.inputs][0] == "text_input" and meta.outputs[0].datatype == "BYTES"
            try:
                stub.ModelMetadata(pb.ModelMetadataRequest(name="gpt-4"))
                raise AssertionError("ModelMetadata of another model answered")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND, e

            sampling = json.dumps({"max_tokens": 8, "temperature": 0})
            request = pb.ModelInferRequest(model_name="fortune-moe", id="1", inputs=[
                bytes_input(pb, "text_input", "Life is"), bytes_input(pb, "sampling_parameters", sampling)])
            whole = raw_text(stub.ModelInfer(request))
            assert whole.startswith("Life is") and len(whole) > len("Life is"), whole

            streamed = pb.ModelInferRequest(model_name="fortune-moe", id="2", inputs=[
                bytes_input(pb, "text_input", "Life is"), bytes_input(pb, "sampling_parameters", sampling),
                pb.ModelInferRequest.InferInputTensor(name="stream", datatype="BOOL", shape=[1],
                                                      contents=pb.InferTensorContents(bool_contents=[True]))])
            pieces, final = [], False
            for r in stub.ModelStreamInfer(iter([streamed])):
                assert not r.error_message, r.error_message
                pieces.append(raw_text(r.infer_response))
                final = r.infer_response.parameters["triton_final_response"].bool_param
            assert final and "Life is" + "".join(pieces) == whole, (pieces, whole)

            bad = pb.ModelInferRequest(model_name="fortune-moe", inputs=[bytes_input(pb, "prompt", "x")])
            try:
                stub.ModelInfer(bad)
                raise AssertionError("an unknown input was taken")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt" in e.details(), e
            print(f"oip_python_test: every v2 RPC answered; {len(pieces)} streamed pieces equal ModelInfer's text")
        finally:
            up.terminate()
            up.wait(timeout=30)


if __name__ == "__main__":
    main()
