// Reference encoder/decoder: the Hugging Face tokenizers library (Node build).
//   node encode.js TOKENIZER_JSON [--add-special-tokens] < in.jsonl > out.jsonl
// Reads {"text": "..."} lines and writes {"ids": [...]} lines; with
// --decode reads {"ids": [...]} and writes {"text": "..."}.
const { Tokenizer } = require("@anush008/tokenizers");
const readline = require("readline");

async function main() {
  const [path, ...flags] = process.argv.slice(2);
  const tok = Tokenizer.fromFile(path);
  const addSpecial = flags.includes("--add-special-tokens");
  const decode = flags.includes("--decode");
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  const out = [];
  for await (const line of rl) {
    if (!line.trim()) continue;
    const obj = JSON.parse(line);
    if (decode) {
      out.push(JSON.stringify({ text: await tok.decode(obj.ids, false) }));
    } else {
      const enc = await tok.encode(obj.text, null, { addSpecialTokens: addSpecial });
      out.push(JSON.stringify({ ids: Array.from(enc.getIds()) }));
    }
  }
  process.stdout.write(out.join("\n") + (out.length ? "\n" : ""));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
