// The official `openai` npm package, one streaming chat completion to a model that is not ready:
// the loading progress arrives as `reasoning_content`, the answer as `content`.
// Usage: node loading.mjs BASE_URL MODEL MAX_TOKENS  -> prints {"content": ..., "reasoning": ...}
import OpenAI from "openai";

const [baseURL, model, maxTokens] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });

const stream = await client.chat.completions.create({
  model, max_tokens: Number(maxTokens), stream: true, messages: [{ role: "user", content: "Count" }],
});
let content = "";
let reasoning = "";
for await (const chunk of stream) {
  const delta = chunk.choices[0]?.delta ?? {};
  content += delta.content ?? "";
  reasoning += delta.reasoning_content ?? "";
}
console.log(JSON.stringify({ content, reasoning }));
