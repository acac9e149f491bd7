#!/usr/bin/env bash
# anvil run --tp N under mpirun against one rank (docs/parallel.md): for
# each model, the greedy continuation's ids of `mpirun -np N anvil run --tp
# N --json` must be one rank's, rank 0 alone must print (one JSON line),
# and --tp with another rank count must fail with its message; anvil
# bench --tp N serves every request, rank 0 alone reporting.
#   cli_tp.sh ANVIL MPIRUN SHARED N MODEL...
set -euo pipefail
anvil=$1 mpirun=$2 shared=$3 n=$4
shift 4
for model in "$@"; do
  args=(run --model "$shared/models/$model" --prompt-ids 1,403,407,261 --temperature 0 --max-tokens 24 --json
        --threads 1)
  one=$("$anvil" "${args[@]}")
  many=$("$mpirun" -np "$n" "$anvil" "${args[@]}" --tp "$n")
  lines=$(printf '%s\n' "$many" | wc -l)
  [ "$lines" = 1 ] || { echo "FAIL $model: $lines lines from $n ranks, want rank 0's one"; exit 1; }
  ids_one=$(printf '%s' "$one" | sed 's/.*"ids": *\[\([^]]*\)\].*/\1/')
  ids_many=$(printf '%s' "$many" | sed 's/.*"ids": *\[\([^]]*\)\].*/\1/')
  [ -n "$ids_one" ] || { echo "FAIL $model: no ids from one rank: $one"; exit 1; }
  [ "$ids_one" = "$ids_many" ] || { echo "FAIL $model: --tp $n gave [$ids_many], one rank [$ids_one]"; exit 1; }
  echo "ok $model --tp $n: [$ids_many]"
done
# anvil bench --tp N: rank 0's report alone, every request served
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# engines per rank: anvil build --tp N writes rank0.engine ... into a
# folder; run from it gives the folder's ids; a job of another size is
# refused by name
"$anvil" build --model "$shared/models/$1" --tp "$n" --output "$tmp/eng" --no-progress --threads 1 2> /dev/null
[ -f "$tmp/eng/rank$((n - 1)).engine" ] || { echo "FAIL: anvil build --tp $n wrote no rank$((n - 1)).engine"; exit 1; }
args=(run --model "$tmp/eng" --prompt-ids 1,403,407,261 --temperature 0 --max-tokens 24 --json --threads 1)
many=$("$mpirun" -np "$n" "$anvil" "${args[@]}" --tp "$n")
ids_eng=$(printf '%s' "$many" | sed 's/.*"ids": *\[\([^]]*\)\].*/\1/')
one=$("$anvil" run --model "$shared/models/$1" --prompt-ids 1,403,407,261 --temperature 0 --max-tokens 24 --json \
  --threads 1)
ids_one=$(printf '%s' "$one" | sed 's/.*"ids": *\[\([^]]*\)\].*/\1/')
[ "$ids_eng" = "$ids_one" ] || { echo "FAIL engines --tp $n gave [$ids_eng], one rank [$ids_one]"; exit 1; }
echo "ok $1 engines --tp $n: [$ids_eng]"
if [ "$n" -gt 2 ]; then
  if err=$("$mpirun" -np 2 "$anvil" "${args[@]}" --tp 2 2>&1); then
    echo "FAIL: engines of --tp $n ran with --tp 2"; exit 1
  fi
  grep -q "of a --tp $n build: run its folder with --tp $n" <<< "$err" ||
    { echo "FAIL: engines of --tp $n under --tp 2: $err"; exit 1; }
  echo "ok: engines of --tp $n refused under --tp 2"
fi
"$mpirun" -np "$n" "$anvil" bench --model "$shared/models/$1" --tp "$n" --num-requests 8 --concurrency 4 \
  --input-len 16 --output-len 8 --threads 1 --no-progress --json "$tmp/b.json" > "$tmp/out" 2>&1
reports=$(grep -c '^anvil bench:.*synthetic' "$tmp/out" || true)
[ "$reports" = 1 ] || { echo "FAIL bench --tp $n: $reports reports"; cat "$tmp/out"; exit 1; }
grep -q '"output_tokens": 64' "$tmp/b.json" && grep -q '"failed": 0' "$tmp/b.json" ||
  { echo "FAIL bench --tp $n:"; cat "$tmp/b.json"; exit 1; }
echo "ok: bench --tp $n, 8 requests of 8 tokens"
# a rank count that is not --tp's: every rank ends, rank 0 says why
if err=$("$mpirun" -np "$n" "$anvil" run --model "$shared/models/$1" --prompt-ids 1 --tp $((n + 1)) 2>&1); then
  echo "FAIL: --tp $((n + 1)) on $n ranks succeeded"; exit 1
fi
# (a here-string, not a pipe: grep -q ends at its match, and under pipefail
# the writer's SIGPIPE would fail the check now and then)
grep -q "needs $((n + 1)) ranks (mpirun -np $((n + 1))), this job has $n" <<< "$err" ||
  { echo "FAIL: --tp $((n + 1)) on $n ranks: $err"; exit 1; }
echo "ok: --tp $((n + 1)) on $n ranks refused"
