// One call through the official TypeScript SDKs, as a user's program would
// make it, for the end-to-end tests of tollgate proxy (e2e/proxy_test.go).
//
//   node clients.mjs <anthropic-json|anthropic-stream|openai-json|openai-stream>
//
// The SDKs read ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY and OPENAI_BASE_URL /
// OPENAI_API_KEY from the environment, as they do for any user. The SDKs keep
// their defaults (maxRetries 2). It prints one JSON object: what the call
// returned and how many HTTP requests the SDK sent.
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";

const scenario = process.argv[2];
const model = process.env.TOLLGATE_MODEL || "claude-sonnet-5";
const openaiModel = process.env.TOLLGATE_OPENAI_MODEL || "gpt-5";
const prompt = [{ role: "user", content: "Write a haiku about rate limits." }];

// Counts the requests the SDK sends, its own retries included.
let requests = 0;
const countingFetch = (url, init) => {
  requests++;
  return fetch(url, init);
};

async function main() {
  switch (scenario) {
    case "anthropic-json": {
      const client = new Anthropic({ fetch: countingFetch });
      const msg = await client.messages.create({ model, max_tokens: 64, messages: prompt });
      return { id: msg.id, type: msg.type, model: msg.model, text: msg.content[0].text, usage: msg.usage };
    }
    case "anthropic-stream": {
      const client = new Anthropic({ fetch: countingFetch });
      const stream = client.messages.stream({ model, max_tokens: 64, messages: prompt });
      const events = [];
      for await (const ev of stream) events.push(ev.type);
      const msg = await stream.finalMessage();
      return { id: msg.id, events, text: msg.content[0].text, usage: msg.usage };
    }
    case "openai-json": {
      const client = new OpenAI({ fetch: countingFetch });
      const c = await client.chat.completions.create({ model: openaiModel, messages: prompt });
      return { id: c.id, text: c.choices[0].message.content, usage: c.usage };
    }
    case "openai-stream": {
      const client = new OpenAI({ fetch: countingFetch });
      const stream = await client.chat.completions.create({
        model: openaiModel, messages: prompt, stream: true, stream_options: { include_usage: true },
      });
      let text = "", chunks = 0, usage = null;
      for await (const chunk of stream) {
        chunks++;
        if (chunk.choices.length) text += chunk.choices[0].delta.content || "";
        if (chunk.usage) usage = chunk.usage;
      }
      return { chunks, text, usage };
    }
    default:
      throw new Error(`unknown scenario ${JSON.stringify(scenario)}`);
  }
}

try {
  const result = await main();
  console.log(JSON.stringify({ ok: true, requests, ...result }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, requests, status: err.status ?? 0, error: String(err.message || err) }));
  process.exitCode = 1;
}
