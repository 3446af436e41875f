#!/usr/bin/env bash
# On the GPU machine (the device tool), from the repository root: unpacks
# .gpu-bundle (tools/gpu/bundle.sh) and runs the named steps under the CUDA
# MPS daemon, each with a time limit, its log under $OUT (or ./gpu-results),
# its summary on stdout. For short, targeted calls; tools/gpu/run.sh runs
# every GPU test.
#   tools/gpu/steps.sh ipcr mesh decode
#   MESH_FILTER='*InProcess/3:*InProcess/9' tools/gpu/steps.sh mesh
# Steps: ipc (cuda_ipc_transport_test, IPC_FILTER), ipcr (its recording tests), mesh
# (remote_experts_gpu_test, MESH_FILTER), fwd (cuda_forward_pass_test,
# FWD_FILTER), kern (cuda_kernels_test, KERN_FILTER), decode / decodem
# (gpu_decode_bench, Qwen3 / Mixtral shapes, counters, DECODE_BATCHES), hop (ipc_hop_bench),
# attn (attention_bench, ATTN_ARGS, then bench/attention_torch.py, TORCH_ARGS),
# serve (`moemesh bench serve` over `moemesh up` on random checkpoints at
# real shapes, SERVE_MODELS="mixtral qwen3 deepseek", SERVE_ARGS), long (a 32K-token prompt beside 16 streams, LONG_ARGS),
# prefix (prefix_cache_bench on the GPU, the demo model; prefixm: on the
# 8-layer random Mixtral, a 2,000-token conversation), decoded
# (gpu_decode_bench, DeepSeek-V3's shape, DECODED_ARGS).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-results}
mkdir -p "$out"
B=/tmp/moemesh-gpu-bundle
rm -rf "$B" && mkdir -p "$B" && tar -C "$B" -xJf .gpu-bundle/bundle.tar.xz
export LD_LIBRARY_PATH=$B/lib:/usr/local/cuda/lib64 MOEMESH_BIN=$B/build/tools/moemesh/moemesh
export MOEMESH_EXPERT_BIN=$B/build/services/expert/moemesh-expert
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
mkdir -p /tmp/mps /tmp/mpslog
# The daemon keeps any stdout it inherits open: a pipe reading this script
# would never end.
nvidia-cuda-mps-control -d < /dev/null > /dev/null 2>&1
gtest() {  # NAME LOG TIMEOUT ARGS...
  local name=$1 log=$2 limit=$3
  shift 3
  timeout "$limit" "$B/bin/$name" "$@" > "$out/$log" 2>&1
  echo "$log rc=$?"
  grep -E "^\[  (FAILED|PASSED) |FAILED  \]|graphs replayed" "$out/$log" | head -40
  grep -A8 "Failure" "$out/$log" | head -60
}
# A random-weight checkpoint at a real model's shape with the demo model's
# tokenizer, in /tmp/NAME, once: mixtral and qwen3 of 8 layers, deepseek of
# 2 (1 dense, 1 MoE: 24 GB; the disk holds 64).
model() {
  local preset=mixtral-8x7b layers=8
  case $1 in qwen3) preset=qwen3-30b-a3b ;; deepseek) preset=deepseek-v3 layers=2 ;; esac
  [ -f "/tmp/$1/model.safetensors" ] ||
    timeout 200 "$MOEMESH_BIN" random-model --preset $preset --layers $layers --tokenizer models/fortune-moe \
      --out "/tmp/$1" >> "$out/random-model.txt" 2>&1
}
for step in "$@"; do
  start=$(date +%s)
  case $step in
    ipc) gtest cuda_ipc_transport_test ipc.log 240 --gtest_filter="${IPC_FILTER:-*}" ;;
    ipcr) gtest cuda_ipc_transport_test ipcr.log 60 --gtest_filter='*Record*' ;;
    mesh) gtest remote_experts_gpu_test mesh.log 240 --gtest_filter="${MESH_FILTER:-*}" ;;
    fwd) gtest cuda_forward_pass_test fwd.log 300 --gtest_filter="${FWD_FILTER:-*}" ;;
    kern) gtest cuda_kernels_test kern.log 200 --gtest_filter="${KERN_FILTER:-*}" ;;
    attn)
      timeout 240 "$B/bench/attention_bench" ${ATTN_ARGS:-} > "$out/attn.txt" 2>&1
      echo "attn rc=$?"
      cat "$out/attn.txt"
      # PyTorch's SDPA on the same prompts, beside the figures above.
      timeout 200 python3 bench/attention_torch.py --moemesh "$out/attn.txt" ${TORCH_ARGS:-} > "$out/attn_torch.txt" 2>&1
      echo "attn_torch rc=$?"
      cat "$out/attn_torch.txt" ;;
    decode|decodem)
      shape=qwen3
      [ "$step" = decodem ] && shape=mixtral
      timeout 200 "$B/bench/gpu_decode_bench" --shapes "$shape" --batches "${DECODE_BATCHES:-1,8,32,64}" --ipc-sync counter \
        > "$out/$step.txt" 2>&1
      echo "$step rc=$?"
      tail -8 "$out/$step.txt" ;;
    serve)
      # SERVE_MODELS in turn (each removed after, but the last): the experts
      # in the router, then in a worker on the same GPU over cuda-ipc.
      models=(${SERVE_MODELS:-mixtral})
      for m in "${models[@]}"; do
        model "$m"
        for where in router worker; do
          flags="--router-device=cuda --expert-shards=0" label="$m, experts in the router"
          [ $where = worker ] && flags="--router-device=cuda --expert-device=cuda --expert-shards=1" \
            label="$m, experts in a worker (cuda-ipc)"
          timeout 240 python3 bench/serving/serving.py run --models "/tmp/$m" --up-flags "$flags" --label "$label" \
            ${SERVE_ARGS:---lengths 128:128 --concurrency 1,8,32,64 --num-prompts 64} --out "$out/serve-$m-$where" \
            > "$out/serve-$m-$where.txt" 2>&1
          echo "serve ($m, $where) rc=$?"
          tail -2 "$out/serve-$m-$where.txt"
          python3 -c 'import json,sys
for r in json.load(open(sys.argv[1]))["runs"]:
  for p in r["results"]: print(r["input_len"], r["output_len"], p["load"], "%.0f tok/s" % p["output_tokens_per_s"], "TTFT p50 %.1f" % p["ttft_ms"]["p50"], "ITL p50 %.2f p99 %.2f" % (p["itl_ms"]["p50"], p["itl_ms"]["p99"]))' \
            "$out/serve-$m-$where/results.json" 2>&1 | tail -12
        done
        # Both in one results.json (plot it where gnuplot is: serving.py plot).
        python3 bench/serving/serving.py merge --out "$out/serve-$m" "$out/serve-$m-router/results.json" \
          "$out/serve-$m-worker/results.json" > /dev/null
        [ "$m" != "${models[-1]}" ] && rm -rf "/tmp/$m"
      done ;;
    long)
      model mixtral
      timeout 300 python3 bench/serving/serving.py long --model /tmp/mixtral --up-flags "--router-device=cuda --expert-shards=0" \
        ${LONG_ARGS:-} --out "$out/long" > "$out/long.txt" 2>&1
      echo "long rc=$?"
      tail -5 "$out/long.txt" ;;
    prefix)
      timeout 200 "$B/bench/prefix_cache_bench" --device cuda > "$out/prefix.txt" 2>&1
      echo "prefix rc=$?"
      tail -12 "$out/prefix.txt" ;;
    prefixm)  # issue #14's figure: a 2,000-token conversation, 64 streams sharing 1,000 tokens
      model mixtral
      timeout 300 "$B/bench/prefix_cache_bench" --device cuda --model /tmp/mixtral --conversation 2000 \
        --shared-prompt 1000 > "$out/prefixm.txt" 2>&1
      echo "prefixm rc=$?"
      tail -12 "$out/prefixm.txt" ;;
    decoded)
      timeout 400 "$B/bench/gpu_decode_bench" --shapes deepseek ${DECODED_ARGS:---deepseek-layers 3 --batches 64} \
        > "$out/decoded.txt" 2>&1
      echo "decoded rc=$?"
      tail -8 "$out/decoded.txt" ;;
    hop) timeout 200 "$B/bench/ipc_hop_bench" --iterations 30 > "$out/hop.txt" 2>&1; echo "hop rc=$?"; tail -12 "$out/hop.txt" ;;
    *) echo "unknown step $step" ;;
  esac
  echo "  ($step: $(( $(date +%s) - start )) s)"
done
# MPS's quit waits for its clients: an expert worker a failed test left
# behind would hold the call to its time limit. Only programs started from
# the bundle (their command line begins with its path), not a shell whose
# command line merely names it.
pkill -f "^$B/" 2> /dev/null
sleep 1
pkill -9 -f "^$B/" 2> /dev/null
echo quit | timeout 20 nvidia-cuda-mps-control
