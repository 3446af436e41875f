// The Open Inference Protocol over a real gRPC server, in front of a
// gateway and a real router on loopback: every RPC, the inputs' two
// encodings, ModelStreamInfer's pieces and its errors mid-stream.
#include "services/gateway/oip_service.h"

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "services/common/server_util.h"
#include "services/gateway/gateway_test_util.h"

namespace moemesh {
namespace {

class OipServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    demo_ = std::make_unique<DemoGateway>();
    gateway_ = demo_->gateway.get();
    service_ = std::make_unique<OipServiceImpl>(gateway_, "fortune-moe");
    int port = 0;
    server_ = StartServer("127.0.0.1:0", {service_.get()}, &port);
    stub_ = inference::GRPCInferenceService::NewStub(grpc::CreateCustomChannel(
        "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), ClientChannelArguments()));
  }
  void TearDown() override { server_->Shutdown(std::chrono::system_clock::now()); }

  // The gRPC API's greedy text for `prompt`.
  std::string GreedyText(const std::string& prompt, int max_tokens) {
    v1::GenerateRequest r;
    r.set_text(prompt);
    r.set_max_tokens(max_tokens);
    r.mutable_sampling()->set_temperature(0);
    std::string text;
    EXPECT_TRUE(gateway_
                    ->Generate(
                        r, [] { return std::make_unique<grpc::ClientContext>(); },
                        [&](const v1::GenerateResponse& resp) {
                          text += resp.text_delta();
                          return true;
                        })
                    .ok());
    return text;
  }

  static void AddBytes(inference::ModelInferRequest* r, const std::string& name, const std::string& value) {
    auto* in = r->add_inputs();
    in->set_name(name);
    in->set_datatype("BYTES");
    in->add_shape(1);
    in->mutable_contents()->add_bytes_contents(value);
  }
  static void AddBool(inference::ModelInferRequest* r, const std::string& name, bool value) {
    auto* in = r->add_inputs();
    in->set_name(name);
    in->set_datatype("BOOL");
    in->add_shape(1);
    in->mutable_contents()->add_bool_contents(value);
  }
  // A BYTES output's one element, from the raw contents.
  static std::string TextOutput(const inference::ModelInferResponse& r) {
    EXPECT_EQ(r.outputs_size(), 1);
    EXPECT_EQ(r.outputs(0).name(), "text_output");
    EXPECT_EQ(r.outputs(0).datatype(), "BYTES");
    if (r.raw_output_contents_size() != 1 || r.raw_output_contents(0).size() < 4) return "<malformed>";
    const std::string& raw = r.raw_output_contents(0);
    const uint32_t n = static_cast<uint8_t>(raw[0]) | static_cast<uint8_t>(raw[1]) << 8 |
                       static_cast<uint8_t>(raw[2]) << 16 | static_cast<uint32_t>(static_cast<uint8_t>(raw[3])) << 24;
    EXPECT_EQ(n + 4, raw.size());
    return raw.substr(4);
  }

  std::unique_ptr<DemoGateway> demo_;
  Gateway* gateway_ = nullptr;
  std::unique_ptr<OipServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
};

TEST_F(OipServiceTest, HealthAndMetadata) {
  grpc::ClientContext c1, c2, c3, c4, c5, c6;
  inference::ServerLiveResponse live;
  ASSERT_TRUE(stub_->ServerLive(&c1, {}, &live).ok());
  EXPECT_TRUE(live.live());
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(stub_->ServerReady(&c2, {}, &ready).ok());
  EXPECT_TRUE(ready.ready());
  inference::ModelReadyRequest mr;
  mr.set_name("fortune-moe");
  inference::ModelReadyResponse model_ready;
  ASSERT_TRUE(stub_->ModelReady(&c3, mr, &model_ready).ok());
  EXPECT_TRUE(model_ready.ready());
  mr.set_name("gpt-4");
  ASSERT_TRUE(stub_->ModelReady(&c4, mr, &model_ready).ok());
  EXPECT_FALSE(model_ready.ready());
  inference::ModelMetadataRequest mm;
  mm.set_name("fortune-moe");
  inference::ModelMetadataResponse meta;
  ASSERT_TRUE(stub_->ModelMetadata(&c5, mm, &meta).ok());
  EXPECT_EQ(meta.versions(0), "1");
  ASSERT_EQ(meta.inputs_size(), 4);
  EXPECT_EQ(meta.inputs(0).name(), "text_input");
  EXPECT_EQ(meta.outputs(0).name(), "text_output");
  mm.set_name("gpt-4");
  EXPECT_EQ(stub_->ModelMetadata(&c6, mm, &meta).error_code(), grpc::StatusCode::NOT_FOUND);
}

// ModelInfer's text_output is the prompt and the gRPC API's text for it,
// with the inputs as contents or as raw contents.
TEST_F(OipServiceTest, ModelInferEqualsTheGrpcApi) {
  const std::string completion = GreedyText("Life is", 10);
  inference::ModelInferRequest r;
  r.set_model_name("fortune-moe");
  r.set_id("req-1");
  AddBytes(&r, "text_input", "Life is");
  AddBytes(&r, "sampling_parameters", R"({"max_tokens": 10, "temperature": 0})");
  grpc::ClientContext c1;
  inference::ModelInferResponse out;
  grpc::Status st = stub_->ModelInfer(&c1, r, &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(out.id(), "req-1");
  EXPECT_EQ(TextOutput(out), "Life is" + completion);
  EXPECT_EQ(out.parameters().at("finish_reason").string_param(), "length");

  // Raw contents, sampling in the request's parameters, no prompt echoed.
  inference::ModelInferRequest raw;
  raw.set_model_name("fortune-moe");
  for (const char* name : {"text_input", "exclude_input_in_output"}) {
    auto* in = raw.add_inputs();
    in->set_name(name);
    in->set_datatype(std::string(name) == "text_input" ? "BYTES" : "BOOL");
    in->add_shape(1);
  }
  raw.add_raw_input_contents(std::string("\x07\x00\x00\x00", 4) + "Life is");
  raw.add_raw_input_contents(std::string("\x01", 1));
  (*raw.mutable_parameters())["max_tokens"].set_int64_param(10);
  (*raw.mutable_parameters())["temperature"].set_double_param(0);
  grpc::ClientContext c2;
  st = stub_->ModelInfer(&c2, raw, &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(TextOutput(out), completion);
}

TEST_F(OipServiceTest, BadRequestsNameTheInput) {
  struct Case {
    std::function<void(inference::ModelInferRequest*)> fill;
    grpc::StatusCode code;
    std::string message;
  } cases[] = {
      {[](auto*) {}, grpc::StatusCode::INVALID_ARGUMENT, "text_input: is required"},
      {[](auto* r) { AddBytes(r, "image", "x"); }, grpc::StatusCode::INVALID_ARGUMENT, "image: is not an input"},
      {[](auto* r) { AddBool(r, "text_input", true); }, grpc::StatusCode::INVALID_ARGUMENT, "must be BYTES"},
      {[](auto* r) {
         AddBytes(r, "text_input", "a");
         AddBytes(r, "sampling_parameters", "{not json");
       },
       grpc::StatusCode::INVALID_ARGUMENT, "sampling_parameters: must be a JSON object"},
      {[](auto* r) {
         AddBytes(r, "text_input", "a");
         AddBytes(r, "sampling_parameters", R"({"max_tokens": "many"})");
       },
       grpc::StatusCode::INVALID_ARGUMENT, "max_tokens: must be an integer"},
      {[](auto* r) {
         AddBytes(r, "text_input", "a");
         AddBool(r, "stream", true);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "ModelStreamInfer"},
      {[](auto* r) {
         AddBytes(r, "text_input", "a");
         r->set_model_name("gpt-4");
       },
       grpc::StatusCode::NOT_FOUND, "gpt-4"},
      {[](auto* r) {
         r->add_inputs()->set_name("text_input");
         r->mutable_inputs(0)->set_datatype("BYTES");
         r->add_raw_input_contents(std::string("\x09\x00\x00\x00", 4) + "short");
       },
       grpc::StatusCode::INVALID_ARGUMENT, "raw BYTES contents end inside an element"},
  };
  for (const Case& c : cases) {
    inference::ModelInferRequest r;
    c.fill(&r);
    grpc::ClientContext ctx;
    inference::ModelInferResponse out;
    grpc::Status st = stub_->ModelInfer(&ctx, r, &out);
    EXPECT_EQ(st.error_code(), c.code) << st.error_message();
    EXPECT_NE(st.error_message().find(c.message), std::string::npos) << st.error_message();
  }
}

// A stream of three requests: one streamed in pieces (the last marked
// final), one that fails (an error_message, and the stream goes on), one
// answered whole.
TEST_F(OipServiceTest, ModelStreamInferServesEachRequestInOrder) {
  const std::string completion = GreedyText("The best way to", 12);
  grpc::ClientContext ctx;
  auto stream = stub_->ModelStreamInfer(&ctx);
  inference::ModelInferRequest pieces, bad, whole;
  pieces.set_id("pieces");
  AddBytes(&pieces, "text_input", "The best way to");
  AddBool(&pieces, "stream", true);
  AddBytes(&pieces, "sampling_parameters", R"({"max_tokens": 12, "temperature": 0})");
  bad.set_id("bad");
  AddBytes(&bad, "text_input", "x");
  AddBytes(&bad, "sampling_parameters", R"({"temperature": -1})");
  whole.set_id("whole");
  AddBytes(&whole, "text_input", "The best way to");
  AddBytes(&whole, "sampling_parameters", R"({"max_tokens": 12, "temperature": 0})");
  ASSERT_TRUE(stream->Write(pieces) && stream->Write(bad) && stream->Write(whole));
  stream->WritesDone();
  inference::ModelStreamInferResponse resp;
  std::string streamed, whole_text, error;
  int pieces_seen = 0, finals = 0;
  while (stream->Read(&resp)) {
    const inference::ModelInferResponse& r = resp.infer_response();
    if (!resp.error_message().empty()) {
      EXPECT_EQ(r.id(), "bad");
      error = resp.error_message();
      continue;
    }
    const bool final = r.parameters().at("triton_final_response").bool_param();
    finals += final;
    if (r.id() == "pieces") {
      EXPECT_TRUE(error.empty()) << "in order";
      streamed += TextOutput(r);
      ++pieces_seen;
    } else {
      EXPECT_EQ(r.id(), "whole");
      EXPECT_TRUE(final);
      whole_text = TextOutput(r);
    }
  }
  ASSERT_TRUE(stream->Finish().ok());
  EXPECT_GT(pieces_seen, 1);
  EXPECT_EQ(finals, 2);
  EXPECT_EQ(streamed, completion);  // pieces leave the prompt out
  EXPECT_EQ(whole_text, "The best way to" + completion);
  EXPECT_NE(error.find("INVALID_ARGUMENT"), std::string::npos) << error;
}

}  // namespace
}  // namespace moemesh
