#!/usr/bin/env bash
# Record raw vLLM answers (bytes as sent) with curl, for comparison with the project's fixtures.
# usage: record.sh <vllm root URL> [<vllm root URL with --reasoning-parser olmo3>] [outdir]
set -u
V=${1:?vLLM root URL, e.g. http://127.0.0.1:19300}
VRP=${2:-}
OUT=${3:-$(dirname "$0")}
M=${MODEL:-qwen2.5-coder-0.5b}
mkdir -p "$OUT"
TOOLS='[{"type":"function","function":{"name":"get_weather","description":"Get the current weather for a city.","parameters":{"type":"object","properties":{"city":{"type":"string","description":"City name"}},"required":["city"]}}}]'
U='"messages":[{"role":"user","content":"Say hi in five words."}]'
W='"messages":[{"role":"user","content":"What is the weather in Paris?"}]'
RX='"structured_outputs":{"regex":"Let me check\\.\\n<tool_call>\\n\\{\"name\": \"get_weather\", \"arguments\": \\{\"city\": \"Paris\"\\}\\}\\n</tool_call>"}'
BADRX='"structured_outputs":{"regex":"x{\"a\"}"}'
THINK='"messages":[{"role":"user","content":"What is 2+2?"},{"role":"assistant","content":"<think>2 plus 2 makes 4.</think>The answer is 4."},{"role":"user","content":"What is 10-3?"},{"role":"assistant","content":"<think>10 minus 3 makes 7.</think>The answer is 7."},{"role":"user","content":"What is 6+5?"}]'
S='"stream":true,"stream_options":{"include_usage":true}'
C='"temperature":0,"seed":1'
rec() { # name url path body
  curl -sS -N -D "$OUT/$1.headers" -o "$OUT/$1" "$2$3" -H 'Content-Type: application/json' -H "X-Request-Id: rec-$1" -d "$4"
  printf '%s %s bytes, HTTP %s\n' "$1" "$(wc -c < "$OUT/$1")" "$(head -1 "$OUT/$1.headers" | awk '{print $2}')"
}
rec text_plain.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$U,$C,\"max_tokens\":30,$S}"
rec text_plain.json "$V" /v1/chat/completions "{\"model\":\"$M\",$U,$C,\"max_tokens\":30}"
rec logprobs_token_ids.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$U,$C,\"max_tokens\":30,\"logprobs\":true,\"top_logprobs\":0,\"return_tokens_as_token_ids\":true,$S}"
rec logprobs_top_logprobs.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$U,$C,\"max_tokens\":30,\"logprobs\":true,\"top_logprobs\":2,$S}"
rec logprobs_top_logprobs_token_ids.json "$V" /v1/chat/completions "{\"model\":\"$M\",$U,$C,\"max_tokens\":4,\"logprobs\":true,\"top_logprobs\":2,\"return_tokens_as_token_ids\":true}"
rec return_token_ids.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$U,$C,\"max_tokens\":30,\"return_token_ids\":true,$S}"
rec return_token_ids.json "$V" /v1/chat/completions "{\"model\":\"$M\",$U,$C,\"max_tokens\":30,\"return_token_ids\":true}"
rec length.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$U,$C,\"max_tokens\":4,$S}"
rec tool_required.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$W,\"tools\":$TOOLS,\"tool_choice\":\"required\",$C,\"max_tokens\":60,$S}"
rec tool_required.json "$V" /v1/chat/completions "{\"model\":\"$M\",$W,\"tools\":$TOOLS,\"tool_choice\":\"required\",$C,\"max_tokens\":60}"
rec tool_named.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$W,\"tools\":$TOOLS,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}},$C,\"max_tokens\":60,$S}"
rec hermes_auto_text_and_call.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$W,\"tools\":$TOOLS,\"tool_choice\":\"auto\",$C,\"max_tokens\":60,$RX,$S}"
rec hermes_auto_text_and_call.json "$V" /v1/chat/completions "{\"model\":\"$M\",$W,\"tools\":$TOOLS,\"tool_choice\":\"auto\",$C,\"max_tokens\":60,$RX}"
rec error_bad_grammar_stream.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$W,$C,\"max_tokens\":10,$BADRX,$S}"
rec error_bad_grammar.json "$V" /v1/chat/completions "{\"model\":\"$M\",$W,$C,\"max_tokens\":10,$BADRX}"
rec think_tags_no_parser.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$THINK,$C,\"max_tokens\":40,$S}"
rec tokenize.json "$V" /tokenize "{\"model\":\"$M\",$U,\"add_generation_prompt\":true}"
rec error_unknown_model.json "$V" /v1/chat/completions "{\"model\":\"no-such-model\",$U}"
rec error_max_tokens_over_context.json "$V" /v1/chat/completions "{\"model\":\"$M\",$U,\"max_tokens\":5000}"
rec error_top_p.json "$V" /v1/chat/completions "{\"model\":\"$M\",$U,\"top_p\":0}"
LONG=$(python3 -c 'print("apple " * 5000)')
rec error_context_length.json "$V" /v1/chat/completions "{\"model\":\"$M\",\"messages\":[{\"role\":\"user\",\"content\":\"$LONG\"}],\"max_tokens\":20}"
rec error_context_length_stream.json "$V" /v1/chat/completions "{\"model\":\"$M\",\"messages\":[{\"role\":\"user\",\"content\":\"$LONG\"}],\"max_tokens\":20,$S}"
# a prompt plus max_tokens over the context is accepted now (the generation is cut by the context)
rec prompt_plus_max_tokens_over_context.json "$V" /v1/chat/completions "{\"model\":\"$M\",$U,$C,\"max_tokens\":4090}"
# logprobs beside <think> tags (no parser), tool markup, and the token tracking + include mode
# (readable logprobs, ids from return_token_ids)
LP='"logprobs":true,"top_logprobs":1'
rec logprobs_think_tags.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$THINK,$C,\"max_tokens\":40,$LP,$S}"
rec logprobs_think_tags.json "$V" /v1/chat/completions "{\"model\":\"$M\",$THINK,$C,\"max_tokens\":40,$LP}"
rec logprobs_think_tags_return_token_ids.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$THINK,$C,\"max_tokens\":40,$LP,\"return_token_ids\":true,$S}"
rec logprobs_think_tags_return_token_ids.json "$V" /v1/chat/completions "{\"model\":\"$M\",$THINK,$C,\"max_tokens\":40,$LP,\"return_token_ids\":true}"
rec logprobs_hermes_auto.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$W,\"tools\":$TOOLS,\"tool_choice\":\"auto\",$C,\"max_tokens\":60,$RX,$LP,$S}"
rec logprobs_hermes_auto.json "$V" /v1/chat/completions "{\"model\":\"$M\",$W,\"tools\":$TOOLS,\"tool_choice\":\"auto\",$C,\"max_tokens\":60,$RX,$LP}"
rec tool_required_token_ids.sse "$V" /v1/chat/completions "{\"model\":\"$M\",$W,\"tools\":$TOOLS,\"tool_choice\":\"required\",$C,\"max_tokens\":60,\"logprobs\":true,\"top_logprobs\":0,\"return_tokens_as_token_ids\":true,$S}"
rec error_auto_tool_choice_unknown_tool.json "$V" /v1/chat/completions "{\"model\":\"$M\",$W,\"tools\":$TOOLS,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"nope\"}}}"
if [ -n "$VRP" ]; then
  rec reasoning_parser_olmo3.sse "$VRP" /v1/chat/completions "{\"model\":\"$M\",$THINK,$C,\"max_tokens\":40,$S}"
  rec reasoning_parser_olmo3.json "$VRP" /v1/chat/completions "{\"model\":\"$M\",$THINK,$C,\"max_tokens\":40}"
  rec reasoning_parser_olmo3_logprobs.sse "$VRP" /v1/chat/completions "{\"model\":\"$M\",$THINK,$C,\"max_tokens\":40,$LP,$S}"
  rec reasoning_parser_olmo3_logprobs.json "$VRP" /v1/chat/completions "{\"model\":\"$M\",$THINK,$C,\"max_tokens\":40,$LP}"
  rec reasoning_parser_olmo3_return_token_ids.sse "$VRP" /v1/chat/completions "{\"model\":\"$M\",$THINK,$C,\"max_tokens\":40,\"return_token_ids\":true,\"logprobs\":true,\"top_logprobs\":0,\"return_tokens_as_token_ids\":true,$S}"
fi
# drop the raw request ids of the header files; keep them small
for f in "$OUT"/*.headers; do grep -iE '^(HTTP|content-type|x-request-id)' "$f" > "$f.tmp"; mv "$f.tmp" "$f"; done
rm -f "$OUT"/error_context_length*.json.headers
