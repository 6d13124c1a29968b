#!/usr/bin/env bash
# The measurements of issue 9 (GPU speed), prepared for a session on the GPU machine. Run from
# the project root there, after the install that begins every command (../shared/gpu/README.md):
#
#   bash .gpu/install.sh && bash tools/gpu_session.sh [STEP ...]
#
# Steps, in this order (default: all five):
#   tests  pytest -m cuda: the CUDA kernel tests, train_net.py with AMP (float16, bfloat16),
#          the Predictor and the CLI demo on CUDA against float32 on the CPU, the inference
#          benchmark's CUDA run (or in two parts: kernel = tests/test_ms_deform_attn.py,
#          models = the rest)
#   syncs  tools/count_host_syncs.py --device cuda: the operations that wait for the GPU, by
#          stage (the CPU tests hold the count; this lists them on the real device)
#   op     tools/benchmark_ms_deform_attn.py --device cuda
#   infer  tools/benchmark_inference.py --device cuda, ours vs official-style, for fp32, bf16
#          and fp16 at batch 1 and 8 (one run each, JSON in $OUT/inference_cuda_*.json)
#   sbs    bash .gpu/side_by_side.sh: the project against the official release (~4 minutes;
#          or one part of it: sbs-op, sbs-infer, sbs-train), then the float32 instance outputs
#          of both compared as sets (tools/compare_instance_sets.py): side_by_side.sh compares
#          them index by index, and the release does not order them by score on CUDA
# and, only when named:
#   graphed tools/benchmark_inference.py --device cuda, ours vs ours-graphed (the network
#          replayed from CUDA graphs, Predictor(cuda_graphs=True); no compiling): bf16, fp32
#          and fp16 at batch 1, bf16 at batch 8
#   graphs tools/benchmark_inference.py --device cuda, ours vs ours-cuda-graphs (torch.compile
#          with CUDA graphs; compiling takes minutes), bf16 at batch 1
#   batch8 the side-by-side inference (.gpu/sbs/infer.py) at batch 8: images/s of the official
#          release (fp32, fp16 autocast) and ours (fp32, bf16), same config and weights
#   profile tools/profile_inference.py --device cuda: where an inference's time goes (device
#          busy time, kernel launches, top kernels and host operators), bf16 and fp32 at batch 1
#   swin   tools/benchmark_inference.py --device cuda --variants ours on Swin-T COCO panoptic,
#          fp32 and bf16 at batch 1: stage times of the backbone whose windows are cut by an
#          index gather (for torch.export), never timed on a GPU before
#
# Each step (each inference run) logs to $OUT/<name>.log through tee and runs under its own
# timeout, so a failure or a hang costs only that step; the script goes on past failures and
# ends with a summary (also in $OUT/summary.txt). Exit status: the number of failed steps.
#
# One command of the GPU tool runs at most 10 minutes, install included. The steps share
# BUDGET_S seconds (default 540) from the start of this script: each step's timeout is cut to
# what is left, and a step with under 20 s left is skipped. Seen on the H200 on 2026-11-30:
# install 61-84 s on a fresh machine, kernel 17 s, models 109 s, sbs-op 13 s, sbs-infer 119 s,
# sbs-train 70 s, syncs 17 s, a profile about 20 s. So one command holds, e.g.:
#   bash .gpu/install.sh && BUDGET_S=$((565 - SECONDS)) bash tools/gpu_session.sh \
#     kernel sbs-op models sbs-infer sbs-train syncs
# (a warm machine gives a second command only if it comes within 30 s of the first).
# Timeouts per step (seconds) can be set: T_TESTS, T_SYNCS, T_OP, T_INFER (each run), T_SBS,
# T_GRAPHS.
# INFER_VARIANTS (default "ours official-style") and INFER_REPEATS (default "10 5": batch 1,
# batch 8) change the inference runs; PYTHON (default python3) the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

OUT=${OUT:-output/gpu_session}
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}
INFER_VARIANTS=${INFER_VARIANTS:-ours official-style}
read -r REPEATS_BATCH_1 REPEATS_BATCH_8 <<<"${INFER_REPEATS:-10 5}"
mkdir -p "$OUT"
summary=()
failed=0

# run_step NAME TIMEOUT_S COMMAND...: COMMAND under a timeout (cut to the budget left),
# logged to $OUT/NAME.log; one summary line.
run_step() {
  local name=$1 limit=$2 log="$OUT/$1.log" start=$SECONDS status result
  shift 2
  local left=$((BUDGET_S - SECONDS))
  if ((left < 20)); then
    summary+=("$(printf '%-24s %-22s %5s  %s' "$name" "SKIPPED (budget)" "-" "BUDGET_S=$BUDGET_S")")
    return
  fi
  ((limit > left)) && limit=$left
  echo "=== $name $(date +%T), timeout ${limit}s: $*" | tee "$log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
  case $status in
    0) result=ok ;;
    124 | 137) result="TIMED OUT (${limit}s)" ;;
    *) result="FAILED (exit $status)" ;;
  esac
  ((status == 0)) || failed=$((failed + 1))
  summary+=("$(printf '%-24s %-22s %4ds  %s' "$name" "$result" $((SECONDS - start)) "$log")")
}

if ! "$PYTHON" -c "import detectron2, mask2former" 2>/dev/null; then
  echo "detectron2 or mask2former cannot be imported: begin the command with bash .gpu/install.sh"
  exit 1
fi
{
  echo "date: $(date -Is)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi -L 2>&1
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee "$OUT/environment.log"

for step in "${@:-tests syncs op infer sbs}"; do
  for part in $step; do
    case $part in
      tests)
        run_step tests "${T_TESTS:-300}" "$PYTHON" -m pytest -q -m cuda -rfEs --durations=25 \
          tests --junitxml "$OUT/pytest_cuda.xml" ;;
      kernel)
        run_step tests_kernel "${T_TESTS:-300}" "$PYTHON" -m pytest -v -m cuda -rfEs \
          --durations=10 tests/test_ms_deform_attn.py --junitxml "$OUT/pytest_cuda_kernel.xml" ;;
      models)
        run_step tests_models "${T_TESTS:-300}" "$PYTHON" -m pytest -v -m cuda -rfEs \
          --durations=25 tests --ignore tests/test_ms_deform_attn.py \
          --junitxml "$OUT/pytest_cuda_models.xml" ;;
      syncs)
        run_step host_syncs "${T_SYNCS:-90}" "$PYTHON" tools/count_host_syncs.py --device cuda \
          --json-out "$OUT/host_syncs.json" ;;
      op)
        run_step op "${T_OP:-120}" "$PYTHON" tools/benchmark_ms_deform_attn.py --device cuda ;;
      infer)
        for batch in 1 8; do
          repeats=$REPEATS_BATCH_1
          ((batch == 1)) || repeats=$REPEATS_BATCH_8
          for precision in fp32 bf16 fp16; do
            name=inference_cuda_${precision}_b$batch
            # shellcheck disable=SC2086  # INFER_VARIANTS is a list of words
            run_step "$name" "${T_INFER:-150}" "$PYTHON" tools/benchmark_inference.py \
              --device cuda --precision "$precision" --batch-size "$batch" \
              --repeats "$repeats" --variants $INFER_VARIANTS --json-out "$OUT/$name.json"
          done
        done ;;
      graphs)
        run_step inference_cuda_graphs "${T_GRAPHS:-300}" "$PYTHON" tools/benchmark_inference.py \
          --device cuda --precision bf16 --batch-size 1 --repeats "$REPEATS_BATCH_1" \
          --variants ours ours-cuda-graphs --json-out "$OUT/inference_cuda_graphs.json" ;;
      graphed)
        for run in "bf16 1" "fp32 1" "fp16 1" "bf16 8"; do
          read -r precision batch <<<"$run"
          repeats=$REPEATS_BATCH_1
          ((batch == 1)) || repeats=$REPEATS_BATCH_8
          name=inference_cuda_graphed_${precision}_b$batch
          run_step "$name" "${T_INFER:-150}" "$PYTHON" tools/benchmark_inference.py \
            --device cuda --precision "$precision" --batch-size "$batch" --repeats "$repeats" \
            --variants ours ours-graphed --json-out "$OUT/$name.json"
        done ;;
      batch8)
        base=/tmp/m2f-baseline
        if [ ! -d $base ] || [ ! -f .gpu/sbs/infer.py ]; then
          summary+=("$(printf '%-24s %-22s' batch8 "FAILED (no baseline)")")
          failed=$((failed + 1))
          echo "batch8 needs .gpu/sbs/infer.py and $base: bash .gpu/install.sh first"
          continue
        fi
        ops=$base/mask2former/modeling/pixel_decoder/ops
        common=(--config "$base/configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"
          --synthetic 2 --device cuda --batch 8 --runs 10)
        run_step batch8_official_fp32 "${T_INFER:-150}" env PYTHONPATH="$ops" "$PYTHON" \
          .gpu/sbs/infer.py --impl $base --official "${common[@]}" --no-tf32 \
          --save-weights /tmp/batch8_w.pth --label official-fp32-b8
        run_step batch8_official_fp16 "${T_INFER:-150}" env PYTHONPATH="$ops" "$PYTHON" \
          .gpu/sbs/infer.py --impl $base --official "${common[@]}" --amp fp16 \
          --load-weights /tmp/batch8_w.pth --label official-fp16-b8
        run_step batch8_ours_fp32 "${T_INFER:-150}" "$PYTHON" .gpu/sbs/infer.py --impl "$PWD" \
          "${common[@]}" --no-tf32 --load-weights /tmp/batch8_w.pth --label ours-fp32-b8
        run_step batch8_ours_bf16 "${T_INFER:-150}" "$PYTHON" .gpu/sbs/infer.py --impl "$PWD" \
          "${common[@]}" --amp bf16 --load-weights /tmp/batch8_w.pth --label ours-bf16-b8 ;;
      profile)
        for precision in bf16 fp32; do
          run_step "profile_cuda_$precision" "${T_INFER:-150}" "$PYTHON" tools/profile_inference.py \
            --device cuda --precision "$precision" --json-out "$OUT/profile_cuda_$precision.json"
        done ;;
      swin)
        for precision in fp32 bf16; do
          name=inference_cuda_swin_t_$precision
          run_step "$name" "${T_INFER:-150}" "$PYTHON" tools/benchmark_inference.py \
            --config-file configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml \
            --device cuda --precision "$precision" --repeats "$REPEATS_BATCH_1" --variants ours \
            --json-out "$OUT/$name.json"
        done ;;
      sbs | sbs-op | sbs-infer | sbs-train)
        if [ -f .gpu/side_by_side.sh ]; then
          sbs_part=${part#sbs}  # "" (all three parts) or -op, -infer, -train
          # shellcheck disable=SC2086  # no argument for all three parts
          run_step "side_by_side$sbs_part" "${T_SBS:-330}" bash .gpu/side_by_side.sh ${sbs_part#-}
          # its instance comparison goes index by index; the release's order is not by score
          if [ -f /tmp/sbs_off.pt ] && [ -f /tmp/sbs_pro.pt ]; then
            run_step "instance_sets$sbs_part" 60 "$PYTHON" tools/compare_instance_sets.py \
              /tmp/sbs_off.pt /tmp/sbs_pro.pt
          fi
        else
          summary+=("$(printf '%-24s %-22s' side_by_side "FAILED (no .gpu/)")")
          failed=$((failed + 1))
          echo "no .gpu/side_by_side.sh: run ../shared/gpu/stage.sh on the development machine"
        fi ;;
      *)
        echo "unknown step $part (tests, kernel, models, syncs, op, infer, sbs, sbs-op," \
          "sbs-infer, sbs-train, batch8, graphed, graphs, profile, swin)"
        exit 2 ;;
    esac
  done
done

{
  echo
  echo "=== summary ($((SECONDS))s, $failed failed; logs in $OUT)"
  printf '%s\n' "${summary[@]}"
} | tee "$OUT/summary.txt"
exit "$failed"
