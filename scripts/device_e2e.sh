#!/usr/bin/env bash
# `anvil run --device cuda` end to end, on the GPU machine (device_test.sh
# e2e): stories260K greedy in f32 must give the CPU's ids exactly; then
# every model in f32 and bf16 on CUDA (greedy ids and text printed, and
# whether the f32 ids equal the CPU's).
#   scripts/device_e2e.sh ANVIL_BIN MODELS_DIR
set -uo pipefail
anvil=$1
models=$2
status=0
run() { "$anvil" run --model "$1" "${@:2}" -n 48 -t 0 --json 2>&1; }
m=$models/stories260K
cpu=$(run $m --prompt "Once upon a time" --device cpu)
gpu=$(run $m --prompt "Once upon a time" --device cuda)
echo "cpu:  $cpu"
echo "cuda: $gpu"
if [ "$cpu" = "$gpu" ] && [ -n "$cpu" ] && ! grep -q error <<<"$cpu"; then
  echo "e2e: stories260K f32 greedy: cuda == cpu"
else
  echo "e2e: FAILED stories260K f32 greedy: cuda != cpu"
  status=1
fi
for name in stories260K tinycode tiny-llama3 tiny-qwen2 tiny-mistral tiny-qwen3 tiny-phi3; do
  m=$models/$name
  c=$(run $m --prompt-ids 1,5,9,13,17 --device cpu --dtype f32)
  f=$(run $m --prompt-ids 1,5,9,13,17 --device cuda --dtype f32)
  b=$(run $m --prompt-ids 1,5,9,13,17 --device cuda --dtype bf16)
  same=$([ "$c" = "$f" ] && echo "== cpu" || echo "!= cpu")
  echo "e2e: $name f32 cuda $same; bf16: $(grep -o '"ids":\[[0-9,]*' <<<"$b" | cut -c1-80)"
  if ! grep -q '"ids"' <<<"$f" || ! grep -q '"ids"' <<<"$b"; then
    echo "e2e: FAILED $name: $f $b"
    status=1
  fi
done
# the text path with a tokenizer, bf16 on cuda
"$anvil" run --model $models/stories260K --prompt "Once upon a time" -n 32 -t 0 --device cuda --dtype bf16 || status=1
exit $status
