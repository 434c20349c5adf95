// The official `openai` npm package against the gateway: one chat completion and one stream.
// Usage: node client.mjs BASE_URL MODEL  -> prints {"chat": ..., "stream": ...}
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused" });

const chat = await client.chat.completions.create({
  model, max_tokens: 3, messages: [{ role: "user", content: "Hello" }],
});
const stream = await client.chat.completions.create({
  model, max_tokens: 4, stream: true, messages: [{ role: "user", content: "Count" }],
});
let streamed = "";
for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? "";
console.log(JSON.stringify({ chat: chat.choices[0].message.content, stream: streamed }));
