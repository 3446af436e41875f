#!/usr/bin/env bash
# Collects the training text for the demo model from Debian's fortune
# packages (English: fortunes, fortunes-min, BSD licence; Chinese:
# fortunes-zh, GPL-3.0+) into one folder, one file per database.
#   tools/train/prepare_corpus.sh OUT_DIR
set -euo pipefail
out=${1:?usage: prepare_corpus.sh OUT_DIR}
if ! dpkg-query -W -f='${Status}' fortunes-zh 2>/dev/null | grep -q "install ok installed"; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes fortunes-min fortunes-zh
fi
mkdir -p "$out/en" "$out/zh"
src=/usr/share/games/fortunes
for f in "$src"/*; do
  case "$f" in *.dat|*.u8) continue ;; esac
  [ -f "$f" ] || continue
  name=$(basename "$f")
  case "$name" in
    chinese|tang300|song100) cp "$f" "$out/zh/$name" ;;
    *) cp "$f" "$out/en/$name" ;;
  esac
done
for d in /usr/share/doc/fortunes /usr/share/doc/fortunes-min /usr/share/doc/fortunes-zh; do
  [ -f "$d/copyright" ] && cp "$d/copyright" "$out/COPYRIGHT.$(basename "$d")"
done
du -sh "$out"/en "$out"/zh
