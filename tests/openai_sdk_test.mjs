// OpenAI's official Node SDK (tools/openai_client, installed by
// tools/ci/install_deps.sh) against a real mesh started by `moemesh up` on
// the demo model: completions and chat completions, whole and streamed,
// log probabilities, an error the template raises, and a client that leaves
// mid-stream (the router's running requests return to zero).
//   node tests/openai_sdk_test.mjs MOEMESH_BIN      (from the repository root)
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import assert from 'node:assert/strict';

const require = createRequire(import.meta.url);
const sdk = require('../tools/openai_client/node_modules/openai');
const OpenAI = sdk.OpenAI ?? sdk.default ?? sdk;

const moemesh = process.argv[2];
if (!moemesh) throw new Error('usage: node tests/openai_sdk_test.mjs MOEMESH_BIN');

// Starts the mesh and waits for its HTTP API and the router's metrics.
function startMesh() {
  const child = spawn(moemesh, ['up', '--model=models/fortune-moe', '--expert-shards=1', '--http-port=0',
                                '--kvcache=false'], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    const urls = {};
    const timer = setTimeout(() => reject(new Error(`moemesh up did not start:\n${out}`)), 120000);
    child.on('exit', (code) => reject(new Error(`moemesh up exited (${code}):\n${out}`)));
    child.stdout.on('data', (d) => {
      out += d;
      const api = out.match(/OpenAI-compatible HTTP API at (http:\/\/\S+)/);
      const metrics = out.match(/metrics of router 0 at (http:\/\/\S+)/);
      if (api) urls.api = api[1];
      if (metrics) urls.routerMetrics = metrics[1];
      if (urls.api && urls.routerMetrics && out.includes('gateway listening on')) {
        clearTimeout(timer);
        resolve({ child, ...urls });
      }
    });
  });
}

async function runningRequests(metricsUrl) {
  const text = await (await fetch(metricsUrl)).text();
  const m = text.match(/^moemesh_router_requests_running (\S+)$/m);
  return m ? Number(m[1]) : NaN;
}

const mesh = await startMesh();
let failed = false;
try {
  const client = new OpenAI({ baseURL: mesh.api, apiKey: 'unused', maxRetries: 0 });
  const messages = [{ role: 'system', content: 'Be wise.' }, { role: 'user', content: 'What is life?' }];

  // Completions, whole and streamed: the same greedy text.
  const c = await client.completions.create({ model: 'fortune-moe', prompt: 'Life is', max_tokens: 8,
                                               temperature: 0 });
  assert.equal(c.object, 'text_completion');
  assert.equal(c.choices[0].finish_reason, 'length');
  assert.equal(c.usage.completion_tokens, 8);
  assert.ok(c.choices[0].text.length > 0);
  let streamed = '';
  for await (const chunk of await client.completions.create({ model: 'fortune-moe', prompt: 'Life is',
                                                              max_tokens: 8, temperature: 0, stream: true })) {
    streamed += chunk.choices[0]?.text ?? '';
  }
  assert.equal(streamed, c.choices[0].text);

  // Chat completions, whole and streamed, with log probabilities.
  const chat = await client.chat.completions.create({ model: 'fortune-moe', messages, max_tokens: 10,
                                                      temperature: 0, logprobs: true, top_logprobs: 2 });
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices[0].message.role, 'assistant');
  assert.equal(chat.choices[0].logprobs.content.length, 10);
  assert.equal(chat.choices[0].logprobs.content[0].top_logprobs.length, 2);
  let role = '', content = '', usage = null;
  const stream = await client.chat.completions.create({ model: 'fortune-moe', messages, max_tokens: 10,
                                                        temperature: 0, stream: true,
                                                        stream_options: { include_usage: true } });
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const delta = chunk.choices[0]?.delta ?? {};
    if (delta.role) role = delta.role;
    content += delta.content ?? '';
  }
  assert.equal(role, 'assistant');
  assert.equal(content, chat.choices[0].message.content);
  assert.equal(usage.completion_tokens, 10);

  // The template's own refusal, as the SDK's BadRequestError.
  await assert.rejects(
    client.chat.completions.create({ model: 'fortune-moe', messages: [{ role: 'tool', content: '1',
                                                                         tool_call_id: 'x' }] }),
    (e) => e.status === 400 && /fortune-moe takes system, user and assistant/.test(e.message));
  await assert.rejects(client.chat.completions.create({ model: 'gpt-4', messages }), (e) => e.status === 404);

  // A client that leaves mid-stream cancels its request.
  const controller = new AbortController();
  const long = await client.chat.completions.create(
    { model: 'fortune-moe', messages, max_tokens: 900, ignore_eos: true, stream: true },
    { signal: controller.signal });
  let chunks = 0;
  try {
    for await (const _ of long) {
      if (++chunks === 3) controller.abort();
    }
  } catch (e) {
    assert.ok(e.name === 'AbortError' || /abort/i.test(String(e)), String(e));
  }
  let running = NaN;
  for (let i = 0; i < 100; ++i) {
    running = await runningRequests(mesh.routerMetrics);
    if (running === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(running, 0, 'the abandoned stream still runs on the router');
  console.log('openai_sdk_test: completions, chat completions (whole, streamed, logprobs), errors and an ' +
              'abandoned stream all behave through OpenAI\'s Node SDK');
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  mesh.child.kill('SIGTERM');
}
process.exitCode = failed ? 1 : 0;
