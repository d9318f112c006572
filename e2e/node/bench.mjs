// The TypeScript side of `tollgate bench-proxy` (cmd/tollgate/benchproxy.go),
// which starts the fake API and the proxy, runs this script and reads what it
// prints: one JSON object per line.
//
//   node bench.mjs fleet      BENCH_AGENTS agents of @anthropic-ai/sdk, each making one call after
//                             another through ANTHROPIC_BASE_URL for BENCH_DURATION_MS; a line per call
//   node bench.mjs overhead   BENCH_CALLS pairs of calls, direct (BENCH_DIRECT_URL) and through the
//                             proxy (BENCH_PROXY_URL), side by side: JSON latency and time to the
//                             first SSE event
//
// The SDK keeps its defaults (maxRetries 2, its timeout), as a user's agent
// would.
import Anthropic from "@anthropic-ai/sdk";

const env = (name, def) => process.env[name] ?? def;
const model = env("BENCH_MODEL", "claude-sonnet-5");
const maxTokens = Number(env("BENCH_MAX_TOKENS", "256"));
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

// Words of one token each to the fake API's tokenizer (letters only).
const WORDS = `the of and to in is was for that on with as by at from his her an be this are or had which not but
were have one all their there been has when who they will more no if out so said what up its about into than them
can only other new some could time these two may then do first any my now such like our over man me even most made
after also did many before must through back years where much your way well down should because each just those
people how too little state good very make world still own see men work long get here between both life being under
never day same another know while last might us great old year off come since against go came right used take three
rate limit token bucket request response header retry budget breaker stream model agent queue pace wait minute
second window burst refill capacity admit reserve settle usage`.split(/\s+/);

// mulberry32: a small seeded generator, so every run sends the same prompts.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function prompt(next, size) {
  const words = new Array(size);
  for (let i = 0; i < size; i++) words[i] = WORDS[Math.floor(next() * WORDS.length)];
  return words.join(" ");
}

// call makes one call, reading a stream to its end, and returns when the
// first event came (streams) and the usage.
async function call(client, params, stream) {
  if (!stream) {
    const msg = await client.messages.create(params);
    return { usage: msg.usage };
  }
  const t0 = performance.now();
  let first = 0;
  const s = await client.messages.create({ ...params, stream: true });
  let usage = {};
  for await (const ev of s) {
    if (!first) first = performance.now() - t0;
    if (ev.type === "message_start") usage = { ...ev.message.usage };
    if (ev.type === "message_delta") usage.output_tokens = ev.usage.output_tokens;
  }
  return { usage, firstEventMs: first };
}

async function fleet() {
  const agents = Number(env("BENCH_AGENTS", "16"));
  const durationMs = Number(env("BENCH_DURATION_MS", "120000"));
  const stream = env("BENCH_STREAM", "") === "1";
  const seed = Number(env("BENCH_SEED", "1"));
  const minPrompt = Number(env("BENCH_MIN_PROMPT", "300"));
  const maxPrompt = Number(env("BENCH_MAX_PROMPT", "1500"));
  // Start on a whole second of the wall clock: the fake API counts what it
  // admits per second, and the run's seconds are then whole ones.
  await new Promise((resolve) => setTimeout(resolve, 1000 - (Date.now() % 1000)));
  const start = performance.now();
  const deadline = start + durationMs;
  out({ start: true, agents });
  await Promise.all(Array.from({ length: agents }, async (_, agent) => {
    const client = new Anthropic(); // ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY
    const next = rng(seed * 1000 + agent + 1);
    while (performance.now() < deadline) {
      const size = minPrompt + Math.floor(next() * (maxPrompt - minPrompt + 1));
      const params = { model, max_tokens: maxTokens, messages: [{ role: "user", content: prompt(next, size) }] };
      const t0 = performance.now();
      try {
        const r = await call(client, params, stream);
        out({ agent, start_ms: t0 - start, latency_ms: performance.now() - t0, ok: true, prompt: size, output: r.usage.output_tokens });
      } catch (err) {
        out({ agent, start_ms: t0 - start, latency_ms: performance.now() - t0, ok: false, status: err.status ?? 0, error: String(err.message || err).slice(0, 200) });
      }
    }
  }));
  out({ done: true });
}

async function overhead() {
  const calls = Number(env("BENCH_CALLS", "200"));
  const warmup = Number(env("BENCH_WARMUP", "20"));
  const clients = {
    direct: new Anthropic({ baseURL: env("BENCH_DIRECT_URL"), apiKey: env("ANTHROPIC_API_KEY", "bench") }),
    proxy: new Anthropic({ baseURL: env("BENCH_PROXY_URL"), apiKey: env("ANTHROPIC_API_KEY", "bench") }),
  };
  const params = { model, max_tokens: 16, messages: [{ role: "user", content: prompt(rng(7), 200) }] };
  const results = { direct: { json: [], first: [] }, proxy: { json: [], first: [] } };
  for (let i = 0; i < warmup + calls; i++) {
    // Alternate who goes first, so neither gains from the other's warm caches.
    const order = i % 2 ? ["direct", "proxy"] : ["proxy", "direct"];
    for (const via of order) {
      const t0 = performance.now();
      await call(clients[via], params, false);
      const json = performance.now() - t0;
      const { firstEventMs } = await call(clients[via], params, true);
      if (i >= warmup) {
        results[via].json.push(json);
        results[via].first.push(firstEventMs);
      }
    }
  }
  out({ overhead: results });
}

const mode = process.argv[2];
try {
  if (mode === "fleet") await fleet();
  else if (mode === "overhead") await overhead();
  else throw new Error(`unknown mode ${JSON.stringify(mode)}: fleet or overhead`);
} catch (err) {
  out({ fatal: String(err.stack || err) });
  process.exitCode = 1;
}
