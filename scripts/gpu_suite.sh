#!/usr/bin/env bash
# The GPU suite, run on the device machine from the repo root (see docs/gpu.md for the staging calls).
#   bash scripts/gpu_suite.sh STAGE [STAGE...]
# Stages (each fits one 10-minute device call; state lives in /tmp while the machine stays warm):
#   install   unpack the carried wheels and the prebuilt CUDA llama.cpp into /tmp/site
#   tests     the GPU-marked tests (TESTS_K: a pytest -k filter; TESTS_TIMEOUT_S: default 540)
#   smollm2   engines x batch 1/4/16 on SmolLM2-135M (HF fp16, bnb int8/nf4, llama.cpp, CTranslate2)
#   llama7b-hf, llama7b-llamacpp, llama7b-ct2
#             the same on a Llama-2-7B-shaped random-weights model (built and converted on first use)
#   seed-ENGINE  the seed table (issue 5) for one engine option of conf/engine (hf, hf_int8, hf_nf4,
#             exllamav2, ctranslate2, llamacpp, vllm, vllm_gptq, sglang): Llama-2-7B shapes, ShareGPT prompts,
#             200 new tokens forced, batch 1/4/16/64 (SEED_BATCHES), one batch of prompts per point
#             (dataset.limit = batch size), warmed up on it, then measured SEED_REPS times (SEED_EXTRA:
#             more overrides, e.g. isolation=worker: one engine start for the four points)
#   seed-grid the whole +experiment=seed_engines preset (32 points, isolation=worker) in one sweep; the call
#             stops it cleanly with SIGINT after SEED_GRID_S seconds (default 540) and the next call's same
#             stage resumes it (finished points are skipped). SEED_EXTRA: more overrides
#   seed-grid-restore  put a grid's records packed by an earlier window (.devwheels/seed-grid-records.tar.gz)
#             back into the sweep dir, so seed-grid resumes a grid begun on another machine
#   repeat    the seed's llama.cpp batch-16 point again (resume=false): its tok/s against the first run's CI
#   serving[-ENGINE]  an engine's OpenAI server (default vllm; serving-sglang for issue 20) on the Llama-2-7B
#             shape, open-loop Poisson load at 4 / 16 / inf req/s, ShareGPT prompts, 200 tokens forced, SLOs TTFT
#             1 s and TPOT 50 ms for goodput (SERVE_RATES: other rates, e.g. 16,inf). SGLang offline: seed-sglang;
#             its fidelity: fidelity-sglang
#   speculative[-vllm|-hf]  issue 19: vLLM n-gram and draft model on SmolLM2 (real weights) at batch 1/4/16, HF prompt
#             lookup and assisted generation (draft model) at batch 1/4, against the same points without them:
#             ShareGPT edit requests (conf/experiment/speculative.yaml), EOS allowed, 128 tokens, 3 repetitions
#   exl2-build  compile ExLlamaV2's CUDA extension (JIT, ~2.5 min; cached while the machine stays warm) and put
#             the built module into $OUT: carried back as .devwheels/exllamav2_ext.so.xz.NN, install uses it instead
#   ablation  what slowed the runner's HF figure (scripts/hf_timing_ablation.py), Llama-2-7B shapes, batch 1/16
#   fidelity-CONFIGS  scripts/fidelity.py for comma-separated configurations (hf,hf_static,vllm,...) at
#             batch 1/16 (FID_BATCHES), 3 rounds: the runner's figure against each engine's own loop
#             (FID_EXTRA: more runner overrides, e.g. engine.compute_type=float16 for ctranslate2; FID_ROUNDS;
#             FID_ARGS: more script arguments, e.g. --bare-loop ctranslate2_stamped, --batches 1, --probe-beside; FID_TAG: a file-name suffix;
#             FID_PIN: CPUs to pin both sides to, e.g. 2-3: is a host-bound engine's round-to-round spread the
#             scheduler moving the Python thread?). Logs the host (vmstat) and GPU clocks (nvidia-smi) once a second beside it
#   step-ab-CONFIG  scripts/step_ab.py for an HF configuration (hf, hf_static, hf_int8, hf_nf4) or exllamav2: the runner's
#             step clock (ExLlamaV2: the runner's whole decoding step against the bare one) and memory sampler switched
#             on and off per block of steps inside the same calls, batch 1/16 (AB_BATCHES), AB_SECONDS (default 60) of
#             timed calls per batch size (FID_EXTRA: more runner overrides)
#   hf-static-cv  the compiled HF mode from the CLI (fresh process), batch 1 and 16, 200 tokens, with the
#             stopping rule on: repetitions until the 95 % interval is within ±3 % (at most 12); HSC_BATCHES: other
#             batch sizes; HSC_LIMIT: prompts per repetition (default one batch; 64 at batch 16 = four batches)
#   two-gpus  issue 18 on a 2-GPU machine (kind nvidia-h200-x2): vLLM at tensor_parallel_size 1 and 2, batch 1 and
#             64 (the seed workload), then a two-point hydra/launcher=gpus sweep whose records name their GPU
#             (env_gpu_index) and whose started_at / point_wall_s show the overlap
#   pack      tables and records of every run so far into $OUT (end each call with it: $OUT is emptied)
# Give every call LLM_BENCH_GIT_COMMIT=<the commit you carried>: the device's copy of .git may lag the tree.
set -uo pipefail
[ -n "${LLM_BENCH_GIT_COMMIT:-}" ] || echo "warning: LLM_BENCH_GIT_COMMIT unset; records take the copy's .git HEAD" >&2
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
# scripts/sglang_shim first: SGLang 0.5.15 beside the image's transformers 5.17 registers a config twice (the shim
# says why); it reaches every interpreter, SGLang's spawned processes included, and changes nothing for the others
export PYTHONPATH=$PWD/scripts/sglang_shim:/tmp/site:$PWD PYTHONUNBUFFERED=1
export LLM_BENCH_CACHE=/tmp/llm-bench-cache
export TOKENIZERS_PARALLELISM=false
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16  # ExLlamaV2's JIT build: H100/H200 only, all cores
# CTranslate2 needs cuBLAS 12 (carried); the prebuilt llama.cpp needs torch's CUDA 13 libraries.
libs=$(python3 -c "import nvidia; print(':'.join(p + '/cu13/lib:' + p + '/cublas/lib' for p in nvidia.__path__))" 2>/dev/null)
export LD_LIBRARY_PATH=${libs}:${LD_LIBRARY_PATH:-}
RUNS=/tmp/gpu-runs
COMMON="dataset.limit=16 generation.max_new_tokens=64"
# The fidelity workload: Llama-2-7B shapes, 128-token prompts, 128 tokens forced (issue 16's measurements)
FIDELITY_WORKLOAD="model=llama2-7b-random dataset=synthetic dataset.input_len=128 generation.max_new_tokens=128"
BATCHES=1,4,16

quiet() { grep --line-buffered -vE "it/s\]|s/it\]|batch/s\]|s/batch\]"; }  # a pipe stage: progress bars left out of the logs

sweep() {  # sweep NAME ARGS... : one multirun into $RUNS/NAME, its log under $OUT
  local name=$1; shift
  echo "== $name: python -m runner -m $* $COMMON"
  python -m runner -m hydra.sweep.dir="$RUNS/$name" "$@" $COMMON 2>&1 | quiet \
    | tee -a "$OUT/$name.log" | tail -n 25
}

# One engine family on one model, batch 1/4/16: hf (fp16, bnb int8, bnb nf4), llamacpp (all layers on
# the GPU), ct2 (float16, int8_float16).
hf() { sweep "$1-hf" model="$1" engine=hf engine.dtype=float16 engine.quantization=none,int8,nf4 batch_size=$BATCHES; }
llamacpp() { sweep "$1-llamacpp" model="$1" engine=llamacpp batch_size=$BATCHES; }
ct2() { sweep "$1-ct2" model="$1" engine=ctranslate2 engine.compute_type=float16,int8_float16 batch_size=$BATCHES; }

for stage in "$@"; do
  echo "#### stage $stage ($(date -u +%H:%M:%S))"
  case $stage in
    install)
      bash .devwheels/parts/install.sh || exit 1
      # The prebuilt llama.cpp (41 MB) may come in its own call, copied to /tmp, as it does not fit beside the
      # last part of the wheels in one 64 MiB carry.
      for tarball in .devwheels/llama-cpp-python-0.3.36-cuda13-sm90.tar.xz /tmp/llama-cpp-python-0.3.36-cuda13-sm90.tar.xz; do
        if [ -f $tarball ]; then tar -xJf $tarball -C /tmp/site || exit 1; break; fi; done
      if [ -d .devwheels/cache ]; then mkdir -p "$LLM_BENCH_CACHE" && cp -r .devwheels/cache/. "$LLM_BENCH_CACHE/"; fi
      # ExLlamaV2's CUDA extension as an earlier exl2-build packed it: imported as a prebuilt module, no JIT build
      # (xz-compressed and split: a file coming back from the device is at most 16 MiB)
      if ls .devwheels/exllamav2_ext.so.xz.* >/dev/null 2>&1; then cat .devwheels/exllamav2_ext.so.xz.* | xz -d > /tmp/site/exllamav2_ext.so; fi
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
      python3 -m pip list --path /tmp/site 2>/dev/null | grep -iE "^(vllm|exllamav2|llama.cpp|ctranslate2|bitsandbytes|hydra-core) " ;;
    tests)
      # -v -s with unbuffered output: a test cut by the timeout still leaves the lines of the ones before it,
      # and the figures tests print (agreement shares) reach the log
      LLM_BENCH_INSTANT_FAILURES=1 timeout "${TESTS_TIMEOUT_S:-540}" python -m pytest -v -s -rs -m gpu tests ${TESTS_K:+-k "$TESTS_K"} 2>&1 \
        | tee "$OUT/gpu-tests.log" | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error|^E  |^---|assert" | tail -n 60 ;;
    smollm2) hf smollm2-135m; llamacpp smollm2-135m; ct2 smollm2-135m ;;
    smollm2-*) ${stage#smollm2-} smollm2-135m ;;
    repeat)
      COMMON="model=llama2-7b-random dataset=sharegpt dataset.limit=16 generation.max_new_tokens=200 measure.repetitions=${SEED_REPS:-3} resume=false"
      sweep seed-llamacpp-repeat engine=llamacpp batch_size=16 ;;
    serving|serving-*)
      COMMON="scenario=serving model=llama2-7b-random dataset=sharegpt dataset.limit=64 generation.max_new_tokens=200 serving.num_requests=64 serving.slo_ttft_ms=1000 serving.slo_tpot_ms=50"
      served=vllm; [ "$stage" != serving ] && served=${stage#serving-}
      sweep "serving-$served" engine="$served" serving.request_rate="${SERVE_RATES:-4,16,inf}" ;;
    speculative|speculative-vllm|speculative-hf)
      # issue 19: the CPU preset's slice (ShareGPT edit requests, EOS allowed), longer; SmolLM2 real weights, its own draft
      COMMON="+experiment=speculative dataset.limit=16 generation.max_new_tokens=128 measure.repetitions=3"
      [ "$stage" != speculative-hf ] && sweep speculative-vllm engine=vllm engine.speculative.method=none,prompt_lookup,draft batch_size=1,4,16
      # HF generate is host-bound (~20 ms per token at batch 1 here: 16 prompts x 128 tokens took 160 s a point),
      # so it gets the preset's own slice: 8 prompts, 64 tokens
      # with the stopping rule: the vLLM rows' CVs reached 16-37 % with 3 repetitions
      COMMON="+experiment=speculative measure.repetitions=3 measure.target_rel_ci=0.03 measure.max_repetitions=${SPEC_MAX_REPS:-6}"
      [ "$stage" != speculative-vllm ] && sweep speculative-hf engine=hf engine.dtype=float16 engine.speculative.method=none,prompt_lookup,draft batch_size=1,4 ;;
    ablation)
      python scripts/hf_timing_ablation.py --batch-sizes 1,16 --batches 2 --rounds 3 $FIDELITY_WORKLOAD \
        engine.dtype=float16 2>&1 | quiet | tee "$OUT/ablation.log" ;;
    fidelity-*)
      configs=${stage#fidelity-}
      name=fidelity-${configs//,/_}${FID_TAG:-}
      # beside it, once a second: the host (vmstat: run queue, CPU stolen by the hypervisor) and the GPU's clocks
      vmstat -t 1 > "$OUT/$name.vmstat" 2>&1 & watch_host=$!
      nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,utilization.gpu,pstate --format=csv -l 1 \
        > "$OUT/$name.smi.csv" 2>&1 & watch_gpu=$!
      ${FID_PIN:+taskset -c $FID_PIN} python scripts/fidelity.py --engines "$configs" --batch-sizes "${FID_BATCHES:-1,16}" --rounds "${FID_ROUNDS:-3}" \
        --out "$OUT/$name" ${FID_ARGS:-} $FIDELITY_WORKLOAD ${FID_EXTRA:-} 2>&1 | quiet \
        | tee "$OUT/$name.log" | tail -n 30
      kill $watch_host $watch_gpu 2>/dev/null ;;
    hf-static-cv)
      COMMON="model=llama2-7b-random dataset=synthetic dataset.input_len=128 dataset.limit=${HSC_LIMIT:-\${batch_size\}} generation.max_new_tokens=200 measure.repetitions=3 measure.target_rel_ci=0.03 measure.max_repetitions=12"
      sweep hf-static-cv${HSC_LIMIT:+-limit$HSC_LIMIT} engine=hf engine.cache_implementation=static engine.compile=true batch_size=${HSC_BATCHES:-1,16} ;;
    step-ab-*)
      configs=${stage#step-ab-}
      python scripts/step_ab.py --engine "$configs" --batch-sizes "${AB_BATCHES:-1,16}" --seconds "${AB_SECONDS:-60}" \
        --out "$OUT/step-ab-$configs" $FIDELITY_WORKLOAD ${FID_EXTRA:-} 2>&1 | quiet \
        | tee "$OUT/step-ab-$configs.log" | tail -n 8 ;;
    exl2-build)
      TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 -c "import exllamav2, exllamav2.ext; print('exllamav2', exllamav2.__version__)" 2>&1 | tail -n 3
      # The built module into $OUT (xz parts of 15 MiB): kept here as .devwheels/exllamav2_ext.so.xz.NN, the install stage puts it on the path
      # of the next machine (same image: torch 2.11, CUDA 13, sm_90), which then skips this ~2.5-minute build.
      built=$(python3 -c "from torch.utils.cpp_extension import _get_build_directory as d; print(d('exllamav2_ext', False))")/exllamav2_ext.so
      if [ -f "$built" ]; then xz -T0 -c "$built" | split -b 15M -d - "$OUT/exllamav2_ext.so.xz."; ls -la "$OUT"/exllamav2_ext.so.xz.*; fi ;;
    seed-grid-restore)
      # A grid split over two device windows: the records an earlier window packed (carried back as
      # .devwheels/seed-grid-records.tar.gz; same code, or the finished points would mix two versions) go back
      # into the sweep dir, and seed-grid then skips them.
      # --skip-old-files: a record already in the sweep dir (this window's) is never overwritten by the carried one
      mkdir -p "$RUNS" && tar -xzf .devwheels/seed-grid-records.tar.gz --skip-old-files -C "$RUNS" ./seed-grid \
        && ls "$RUNS/seed-grid" | wc -l ;;
    seed-grid)
      echo "== python -m runner -m +experiment=seed_engines ${SEED_EXTRA:-}"
      timeout --signal=INT "${SEED_GRID_S:-540}" python -m runner -m hydra.sweep.dir="$RUNS/seed-grid" \
        +experiment=seed_engines ${SEED_EXTRA:-} 2>&1 | quiet \
        | tee -a "$OUT/seed-grid.log" | grep -E "^(record|skipped|error|interrupted)|run\(s\) failed|point\(s\)" ;;
    seed-*)
      COMMON="model=llama2-7b-random dataset=sharegpt dataset.limit=\${batch_size} generation.max_new_tokens=200 measure.repetitions=${SEED_REPS:-3}"
      # CTranslate2's default compute type is the stored float32: the seed compares 16-bit engines.
      extra=""; [ "$stage" = seed-ctranslate2 ] && extra="engine.compute_type=float16"
      sweep "seed-${stage#seed-}" engine="${stage#seed-}" $extra batch_size="${SEED_BATCHES:-1,4,16,64}" ${SEED_EXTRA:-} ;;
    two-gpus)
      COMMON="model=llama2-7b-random dataset=sharegpt dataset.limit=\${batch_size} generation.max_new_tokens=200 measure.repetitions=3"
      sweep vllm-tp engine=vllm engine.tensor_parallel_size=1,2 batch_size=1,64
      sweep gpus-launcher hydra/launcher=gpus engine=vllm batch_size=1,16 ;;  # the model the TP sweep built
    llama7b-*) COMMON="dataset.limit=16 generation.max_new_tokens=32"; ${stage#llama7b-} llama2-7b-random ;;
    pack)
      python -m runner.report "$RUNS" --csv "$OUT/gpu-table.csv" > "$OUT/gpu-table.md"; cat "$OUT/gpu-table.md"
      tar -czf "$OUT/gpu-records.tar.gz" -C "$RUNS" . ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
