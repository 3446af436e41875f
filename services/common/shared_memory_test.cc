#include "services/common/shared_memory.h"

#include <cstring>
#include <string>

#include "gtest/gtest.h"

namespace moemesh {
namespace {

TEST(SharedMemoryTest, WhatOneMappingWritesTheOtherReads) {
  auto made = SharedMemory::Create(1 << 20);
  ASSERT_TRUE(made.ok()) << made.status();
  auto opened = SharedMemory::Open((*made)->name(), 1 << 20);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::memcpy((*made)->data() + 12345, "rows", 4);
  EXPECT_EQ(std::string((*opened)->data() + 12345, 4), "rows");
  std::memcpy((*opened)->data() + (1 << 20) - 3, "kv", 2);
  EXPECT_EQ(std::string((*made)->data() + (1 << 20) - 3, 2), "kv");
  // Once unlinked the name opens no more; both mappings still work.
  (*made)->Unlink();
  EXPECT_EQ(SharedMemory::Open((*made)->name(), 1 << 20).status().code(), absl::StatusCode::kUnavailable);
  (*made)->data()[0] = 'x';
  EXPECT_EQ((*opened)->data()[0], 'x');
}

TEST(SharedMemoryTest, TheMakerRemovesTheNameWhenItGoes) {
  std::string name;
  {
    auto made = SharedMemory::Create(4096);
    ASSERT_TRUE(made.ok()) << made.status();
    name = (*made)->name();
    EXPECT_TRUE(SharedMemory::Open(name, 4096).ok());
  }
  EXPECT_EQ(SharedMemory::Open(name, 4096).status().code(), absl::StatusCode::kUnavailable);
}

TEST(SharedMemoryTest, OnlyItsOwnNamesAndTheTrueSizeOpen) {
  auto made = SharedMemory::Create(8192);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(SharedMemory::Open((*made)->name(), 4096).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SharedMemory::Open((*made)->name(), 0).status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* bad : {"/etc/passwd", "/moemesh-../x", "moemesh-12-ab", "/moemesh-12/ab", "/moemesh-12-AB", "",
                          "/other-12-ab"}) {
    EXPECT_EQ(SharedMemory::Open(bad, 4096).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(SharedMemory::Open("/moemesh-1-ffff", 4096).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(SharedMemory::Create(0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moemesh
