#!/usr/bin/env bash
# anvil run / bench --pp under mpirun against one rank (docs/parallel.md):
# on 2 ranks --pp 2, on 4 ranks --tp 2 --pp 2 and --pp 4; the greedy ids of
# `mpirun -np N anvil run ... --json` must be one rank's, rank 0 alone
# printing (one JSON line); anvil bench serves every request, rank 0 alone
# reporting; a rank count that is not tp x pp, and more stages than the
# model has layers, fail with their messages.
#   cli_pp.sh ANVIL MPIRUN SHARED N
set -euo pipefail
anvil=$1 mpirun=$2 shared=$3 n=$4
if [ "$n" = 2 ]; then layouts=("--pp 2"); else layouts=("--tp 2 --pp 2" "--pp 4"); fi
for layout in "${layouts[@]}"; do
  # stories260K: 5 layers (uneven stages), tied head; tiny-gemma2: post-norms, soft caps
  models=(stories260K)
  [ "$layout" = "--pp 4" ] || models+=(tiny-gemma2)
  for model in "${models[@]}"; do
    args=(run --model "$shared/models/$model" --prompt-ids 1,403,407,261 --temperature 0 --max-tokens 24 --json
          --threads 1)
    one=$("$anvil" "${args[@]}")
    # shellcheck disable=SC2086 # the layout is two or four words
    many=$("$mpirun" -np "$n" "$anvil" "${args[@]}" $layout)
    lines=$(printf '%s\n' "$many" | wc -l)
    [ "$lines" = 1 ] || { echo "FAIL $model $layout: $lines lines from $n ranks, want rank 0's one"; exit 1; }
    ids_one=$(printf '%s' "$one" | sed 's/.*"ids": *\[\([^]]*\)\].*/\1/')
    ids_many=$(printf '%s' "$many" | sed 's/.*"ids": *\[\([^]]*\)\].*/\1/')
    [ -n "$ids_one" ] || { echo "FAIL $model: no ids from one rank: $one"; exit 1; }
    [ "$ids_one" = "$ids_many" ] || { echo "FAIL $model $layout: [$ids_many], one rank [$ids_one]"; exit 1; }
    echo "ok $model $layout: [$ids_many]"
  done
done
# anvil bench over the stages: rank 0's report alone, every request served
# (a step's sequences in 3 micro-batches: groups of uneven sizes)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck disable=SC2086
"$mpirun" -np "$n" "$anvil" bench --model "$shared/models/stories260K" ${layouts[0]} --pp-micro-batches 3 \
  --num-requests 8 --concurrency 4 --input-len 16 --output-len 8 --threads 1 --no-progress --json "$tmp/b.json" > "$tmp/out" 2>&1
reports=$(grep -c '^anvil bench:.*synthetic' "$tmp/out" || true)
[ "$reports" = 1 ] || { echo "FAIL bench ${layouts[0]}: $reports reports"; cat "$tmp/out"; exit 1; }
grep -q '"output_tokens": 64' "$tmp/b.json" && grep -q '"failed": 0' "$tmp/b.json" ||
  { echo "FAIL bench ${layouts[0]}:"; cat "$tmp/b.json"; exit 1; }
echo "ok: bench ${layouts[0]}, 8 requests of 8 tokens"
# refusals: every rank ends, rank 0 says why
if [ "$n" = 2 ]; then
  want="--tp 1 --pp 4 needs 4 ranks (mpirun -np 4), this job has 2"
  refused=(run --model "$shared/models/stories260K" --prompt-ids 1 --pp 4)
else
  want="--pp 4: the model has 3 layers"
  refused=(run --model "$shared/models/tiny-llama3" --prompt-ids 1 --pp 4)
fi
if err=$("$mpirun" -np "$n" "$anvil" "${refused[@]}" 2>&1); then
  echo "FAIL: ${refused[*]} on $n ranks succeeded"; exit 1
fi
# (a here-string, not a pipe: grep -q ends at its match, and under pipefail
# the writer's SIGPIPE would fail the check now and then)
grep -qF -- "$want" <<< "$err" || { echo "FAIL: ${refused[*]} on $n ranks: $err"; exit 1; }
echo "ok: ${refused[*]} on $n ranks refused"
