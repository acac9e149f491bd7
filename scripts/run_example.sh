#!/usr/bin/env bash
# Runs one of examples/ on a model folder and checks what it prints
# (CTest's examples/* tests, and scripts/ci_install.sh on the installed tree).
#   scripts/run_example.sh PATH/TO/generate|stream|server MODEL_DIR [ANVIL]
# With ANVIL (the anvil command), generate's text must be `anvil run`'s, greedy.
set -euo pipefail
exe=$1
model=$2
anvil=${3:-}
name=$(basename "$exe")
out=$(timeout 100 "$exe" "$model")
printf '%s\n' "$out"
fail() { echo "run_example: $name: $*" >&2; exit 1; }
case $name in
  generate) # the prompt, then a greedy continuation of it
    [[ $out == "Once upon a time"?* ]] || fail "expected the prompt and a continuation"
    if [ -n "$anvil" ]; then
      want=$("$anvil" run --model "$model" --prompt "Once upon a time" --max-tokens 32 --temperature 0 2>/dev/null)
      [ "$out" = "$want" ] || fail "not the text of anvil run --temperature 0: '$want'"
    fi ;;
  stream) # the prompt, streamed text, and the final line of the last event
    [[ $out == "Once upon a time"* ]] || fail "expected the prompt first"
    [[ $(printf '%s\n' "$out" | tail -1) =~ ^\[length:\ 32\ tokens\ in\ [0-9]+\ events\]$ ]] ||
      fail "expected '[length: 32 tokens in N events]' last" ;;
  server) # an HTTP 200 with an OpenAI completion
    [[ $out == "HTTP/1."?" 200"* ]] || fail "expected HTTP 200"
    [[ $out == *'"object":"text_completion"'* || $out == *'"object": "text_completion"'* ]] ||
      fail "expected a text_completion" ;;
  *) fail "unknown example" ;;
esac
echo "run_example: $name: ok"
