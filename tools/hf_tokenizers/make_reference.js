// Writes Hugging Face's encodings of test strings, as moemesh's tokenizer
// test fixtures:
//   node make_reference.js TOKENIZER_JSON STRINGS_JSONL > OUT_JSONL
// Each output line: {"text", "ids", "ids_with_special", "decoded"}.
const { Tokenizer } = require("@anush008/tokenizers");
const fs = require("fs");

async function main() {
  const [tokPath, stringsPath] = process.argv.slice(2);
  const tok = Tokenizer.fromFile(tokPath);
  const lines = fs.readFileSync(stringsPath, "utf8").split("\n").filter((l) => l.trim());
  const out = [];
  for (const line of lines) {
    const { text } = JSON.parse(line);
    const plain = Array.from((await tok.encode(text, null, { addSpecialTokens: false })).getIds());
    const special = Array.from((await tok.encode(text, null, { addSpecialTokens: true })).getIds());
    const decoded = await tok.decode(plain, false);
    out.push(JSON.stringify({ text, ids: plain, ids_with_special: special, decoded }));
  }
  process.stdout.write(out.join("\n") + "\n");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
