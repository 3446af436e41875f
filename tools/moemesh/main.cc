// moemesh: the command-line tool.
#include "tools/moemesh/cli.h"

int main(int argc, char** argv) { return moemesh::CliMain(argc, argv); }
