// Times the Hugging Face tokenizers library encoding documents on one thread.
//   RAYON_NUM_THREADS=1 node bench.js TOKENIZER_JSON DOCS_JSONL
// Prints {"seconds": s, "tokens": n, "checksum": c}: the best of 3 passes
// over all documents, batched so that call overhead does not count.
const { Tokenizer } = require("@anush008/tokenizers");
const fs = require("fs");

function checksum(all) {
  // Same rolling hash as bench/tokenizer_bench.cc.
  let h = 0n;
  const M = (1n << 61n) - 1n;
  for (const ids of all) {
    for (const id of ids) h = (h * 1000003n + BigInt(id) + 1n) % M;
    h = (h * 1000003n + 7n) % M;
  }
  return h.toString();
}

async function main() {
  const [tokPath, docsPath] = process.argv.slice(2);
  const tok = Tokenizer.fromFile(tokPath);
  const docs = fs.readFileSync(docsPath, "utf8").split("\n").filter((l) => l).map((l) => JSON.parse(l).text);
  // Only encodeBatch is timed; reading the ids back into JavaScript is not.
  let best = Infinity, all = null;
  for (let rep = 0; rep < 3; rep++) {
    let dt = 0;
    const out = [];
    for (let i = 0; i < docs.length; i += 256) {
      const t0 = process.hrtime.bigint();
      const enc = await tok.encodeBatch(docs.slice(i, i + 256), { addSpecialTokens: false });
      dt += Number(process.hrtime.bigint() - t0) / 1e9;
      for (const e of enc) out.push(e.getIds());
    }
    if (dt < best) { best = dt; all = out; }
  }
  let tokens = 0;
  for (const ids of all) tokens += ids.length;
  console.log(JSON.stringify({ seconds: best, tokens, checksum: checksum(all) }));
}

main().catch((e) => { console.error(e); process.exit(1); });
