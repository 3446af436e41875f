// End to end over real processes on loopback: expert workers
// (moemesh-expert) serve their shards, and `moemesh generate --experts`
// runs attention, gating and sampling against them. The tokens must equal
// the single-process engine's, for every fixture model, with one and with
// several shards; workers stop cleanly on SIGTERM.
//
//   mesh_e2e_test MOEMESH_BIN MOEMESH_EXPERT_BIN
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace moemesh {
namespace {

std::string g_moemesh, g_expert;

// A child process whose stdout we read.
struct Child {
  pid_t pid = -1;
  FILE* out = nullptr;
};

Child Spawn(const std::vector<std::string>& args) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  Child c;
  if (posix_spawn(&c.pid, argv[0], &fa, nullptr, argv.data(), environ) != 0) c.pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  c.out = fdopen(fds[0], "r");
  return c;
}

std::string ReadAll(FILE* f) {
  std::string s;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}

int Wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string Generate(const std::string& model, const std::string& experts) {
  std::vector<std::string> args = {g_moemesh, "generate", "--model", model, "--prompt-ids", "5,17,300,42,7,99,3,250",
                                   "--max-new-tokens", "10", "--output", "json"};
  if (!experts.empty()) args.push_back("--experts=" + experts);
  Child c = Spawn(args);
  std::string out = ReadAll(c.out);
  fclose(c.out);
  EXPECT_EQ(Wait(c.pid), 0) << "moemesh generate failed for " << model;
  return out;
}

class MeshTest : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(MeshTest, GreedyTokensEqualSingleProcess) {
  const auto& [name, shards] = GetParam();
  const std::string model = "tests/fixtures/" + name;
  std::vector<Child> workers;
  std::string addresses;
  for (int i = 0; i < shards; ++i) {
    Child w = Spawn({g_expert, "--model", model, "--shard-index", std::to_string(i), "--num-shards",
                     std::to_string(shards), "--port", "0"});
    ASSERT_GT(w.pid, 0);
    char line[256] = {0};
    ASSERT_NE(fgets(line, sizeof line, w.out), nullptr) << "worker " << i << " printed nothing";
    std::string l(line);
    ASSERT_EQ(l.rfind("listening on ", 0), 0u) << l;
    addresses += (i ? "," : "") + l.substr(13, l.find('\n') - 13);
    workers.push_back(w);
  }
  std::string local = Generate(model, "");
  std::string mesh = Generate(model, addresses);
  auto a = nlohmann::json::parse(local, nullptr, false), b = nlohmann::json::parse(mesh, nullptr, false);
  ASSERT_FALSE(a.is_discarded()) << local;
  ASSERT_FALSE(b.is_discarded()) << mesh;
  EXPECT_EQ(a["token_ids"], b["token_ids"]);
  EXPECT_EQ(a["token_ids"].size(), 10u);
  for (Child& w : workers) {
    kill(w.pid, SIGTERM);
    EXPECT_EQ(Wait(w.pid), 0) << "an expert worker did not stop cleanly";
    fclose(w.out);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MeshTest,
                         ::testing::Combine(::testing::Values("mixtral_sliding", "qwen2_moe", "qwen3_moe_yarn",
                                                              "olmoe_dynamic", "deepseek_v3"),
                                            ::testing::Values(1, 2)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + std::to_string(std::get<1>(info.param)) + "_shards";
                         });

// The demo model writes the same text through two expert workers as in one
// process: a text prompt, seeded sampling, streamed detokenization.
TEST(MeshDemoModelTest, SameTextThroughTheMesh) {
  const std::string model = "models/fortune-moe";
  std::vector<Child> workers;
  std::string addresses;
  for (int i = 0; i < 2; ++i) {
    Child w = Spawn({g_expert, "--model", model, "--shard-index", std::to_string(i), "--num-shards", "2"});
    char line[256] = {0};
    ASSERT_NE(fgets(line, sizeof line, w.out), nullptr);
    std::string l(line);
    ASSERT_EQ(l.rfind("listening on ", 0), 0u) << l;
    addresses += (i ? "," : "") + l.substr(13, l.find('\n') - 13);
    workers.push_back(w);
  }
  for (const char* prompt : {"Life is", "明月"}) {
    std::vector<std::string> args = {g_moemesh, "generate", "--model", model, "--prompt", prompt,
                                     "--max-new-tokens", "40", "--temperature", "0.8", "--top-p", "0.95",
                                     "--seed", "3", "--output", "json"};
    Child local = Spawn(args);
    std::string a = ReadAll(local.out);
    fclose(local.out);
    EXPECT_EQ(Wait(local.pid), 0);
    args.push_back("--experts=" + addresses);
    Child mesh = Spawn(args);
    std::string b = ReadAll(mesh.out);
    fclose(mesh.out);
    EXPECT_EQ(Wait(mesh.pid), 0);
    auto ja = nlohmann::json::parse(a, nullptr, false), jb = nlohmann::json::parse(b, nullptr, false);
    ASSERT_FALSE(jb.is_discarded()) << "not JSON (or not UTF-8): " << b;
    EXPECT_EQ(ja["token_ids"], jb["token_ids"]);
    EXPECT_EQ(ja["text"], jb["text"]);
    EXPECT_FALSE(jb["text"].get<std::string>().empty());
  }
  for (Child& w : workers) {
    kill(w.pid, SIGTERM);
    EXPECT_EQ(Wait(w.pid), 0);
    fclose(w.out);
  }
}

TEST(MeshErrorsTest, UnreachableOrMisplacedWorkersFailClearly) {
  std::vector<std::string> args = {g_moemesh, "generate", "--model", "tests/fixtures/mixtral", "--prompt-ids", "1,2",
                                   "--experts", "127.0.0.1:1", "--experts-connect-timeout-ms", "300"};
  Child c = Spawn(args);
  ReadAll(c.out);
  fclose(c.out);
  EXPECT_EQ(Wait(c.pid), 1);  // UNAVAILABLE: not an argument error
  Child bad = Spawn({g_expert, "--model", "tests/fixtures/mixtral", "--shard-index", "2", "--num-shards", "2"});
  ReadAll(bad.out);
  fclose(bad.out);
  EXPECT_EQ(Wait(bad.pid), 2);
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 3) {
    std::fprintf(stderr, "usage: mesh_e2e_test MOEMESH_BIN MOEMESH_EXPERT_BIN\n");
    return 2;
  }
  moemesh::g_moemesh = argv[1];
  moemesh::g_expert = argv[2];
  return RUN_ALL_TESTS();
}
