#!/usr/bin/env bash
# Language reproduction study (issue 5, item 5b), end to end, from the repository root:
#
#   bash configs/studies/lm_study.sh              # the study (~1 h on a 2-core CPU, see below)
#   SMOKE=1 bash configs/studies/lm_study.sh      # every step at toy size (~6 minutes)
#
# 1. assets: BPE tokenizer on Austen + Dolly text, Llama teacher (hidden 256, 4 layers) and
#    student (hidden 128, 2 layers) pre-trained on the Austen novels (configs/studies/lm_pretrain.py)
# 2. teacher: `logitkd lm sft` on the Dolly training rows; evaluated once (Rouge-L) together with
#    its token-level mis-instruction ratio on Dolly test, S-NI test and the training rows
# 3. per seed: student alone (SFT), SeqKD, token KD, KD+LoCa (each alpha in LOCA_ALPHAS), KD+LS,
#    each trained for STEPS steps and evaluated (`logitkd lm evaluate`: Rouge-L on the first
#    EVAL_LIMIT prompts of Dolly test and S-NI test, greedy + sampling seeds 10, 20)
# 4. table: configs/studies/lm_collect.py (mean ± std, 95% CI, paired t / Wilcoxon vs KD)
#
# Finished cells (an eval.json present) are skipped, so an interrupted study resumes where it
# stopped; a failed cell is logged to $OUT/failed.txt and the study goes on (the table marks it).
#
# Cost on the 2-core CPU (OMP_NUM_THREADS=2, measured with 30-step probes; ~6 s per command is
# Python + transformers start-up): teacher pre-training ~0.6-1 s/step (batch 16 x 128 tokens),
# student ~0.2 s/step; teacher SFT ~0.6 s/step; student SFT ~0.2 s/step, KD ~0.4 s/step (batch 8,
# <= 192 tokens); one student evaluation ~22 s (EVAL_LIMIT=100, 2 sets x 3 decodes x 48 tokens);
# the teacher's answers for SeqKD (4905 prompts, once) ~5 min. With the defaults: assets ~8 min,
# teacher ~8 min, ~13 min per seed, i.e. ~60 min for 3 seeds (measured: 78 min, the first 25 with
# other jobs on the cores; seeds 1 and 2 took 12 min each). SMOKE=1: ~6 min (start-up bound).
#
# Environment (defaults in brackets; SMOKE=1 changes them to toy sizes):
#   OUT [runs/studies/lm]   SEEDS ["0 1 2"]   STEPS [300] student steps per method
#   TEACHER_STEPS [600] teacher instruction tuning   PRETRAIN_TEACHER [600]  PRETRAIN_STUDENT [300]
#   EVAL_LIMIT [100] prompts per test file   TRAIN_LIMIT [] training rows (all 4905 when empty)
#   LOCA_ALPHAS ["0.9 0.99"]   PYTHON [.venv/bin/python]   OMP_NUM_THREADS [2]
#   METHODS ["sft seqkd kd kd_loca kd_ls"] which student methods to run
# A second study that reuses the first one's assets and teacher (e.g. a longer schedule):
#   mkdir -p runs/studies/lm-600 && for d in assets teacher-sft student-pretrained; do
#     ln -s ../lm/$d runs/studies/lm-600/$d; done
#   OUT=runs/studies/lm-600 STEPS=600 METHODS="sft kd kd_loca" LOCA_ALPHAS=0.99 bash configs/studies/lm_study.sh
set -uo pipefail
METHODS=" ${METHODS:-sft seqkd kd kd_loca kd_ls} "
want() { [[ "$METHODS" == *" $1 "* ]]; }

SMOKE="${SMOKE:-0}"
PYTHON="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}src"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
BASE=configs/studies/lm_base.yaml

if [[ "$SMOKE" == 1 ]]; then
    OUT="${OUT:-runs/studies/lm-smoke}"
    SEEDS="${SEEDS:-0 1 2}"
    STEPS="${STEPS:-4}"
    TEACHER_STEPS="${TEACHER_STEPS:-6}"
    PRETRAIN_TEACHER="${PRETRAIN_TEACHER:-10}"
    PRETRAIN_STUDENT="${PRETRAIN_STUDENT:-5}"
    EVAL_LIMIT="${EVAL_LIMIT:-4}"
    TRAIN_LIMIT="${TRAIN_LIMIT:-32}"
    LOCA_ALPHAS="${LOCA_ALPHAS:-0.9 0.99}"
    PRETRAIN_ARGS=(--max-chars 100000 --vocab-size 600 --seq-len 64 --batch-size 4
        --teacher-hidden 64 --teacher-layers 2 --teacher-heads 2
        --student-hidden 32 --student-layers 1 --student-heads 2)
    EXTRA=(generation.max_new_tokens=8 seqkd.max_new_tokens=8 train.logging_steps=2)
else
    OUT="${OUT:-runs/studies/lm}"
    SEEDS="${SEEDS:-0 1 2}"
    STEPS="${STEPS:-300}"
    TEACHER_STEPS="${TEACHER_STEPS:-600}"
    PRETRAIN_TEACHER="${PRETRAIN_TEACHER:-600}"
    PRETRAIN_STUDENT="${PRETRAIN_STUDENT:-300}"
    EVAL_LIMIT="${EVAL_LIMIT:-100}"
    TRAIN_LIMIT="${TRAIN_LIMIT:-}"
    LOCA_ALPHAS="${LOCA_ALPHAS:-0.9 0.99}"
    PRETRAIN_ARGS=()
    EXTRA=()
fi
[[ -n "$TRAIN_LIMIT" ]] && EXTRA+=("data.limit=$TRAIN_LIMIT")
EXTRA+=("data.eval_limit=$EVAL_LIMIT")

ASSETS="$OUT/assets"
TEACHER="$OUT/teacher-sft"
TRAIN_FILE=../shared/data/instructions/dolly/train-partial.jsonl
mkdir -p "$OUT"
: > "$OUT/failed.txt"
START=$(date +%s)

log() { printf '[%s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$(($(date +%s) - START))" "$*"; }

# lm ACTION DIR [overrides...]: one `logitkd lm` call with the study recipe; its output goes to
# DIR/<action>.log. Returns the command's status.
lm() {
    local action=$1 dir=$2
    shift 2
    mkdir -p "$dir"
    "$PYTHON" -m logitkd lm "$action" --config "$BASE" train.output_dir="$dir" "${EXTRA[@]}" "$@" \
        > "$dir/$action.log" 2>&1
}

# cell NAME DIR TRAIN_ACTION [train overrides...]: train the student with TRAIN_ACTION (unless
# DIR already holds a model) and evaluate it (unless DIR/eval.json exists).
cell() {
    local name=$1 dir=$2 action=$3
    shift 3
    if [[ -f "$dir/eval.json" ]]; then
        log "skip $name (done)"
        return 0
    fi
    log "$name: $action"
    if [[ ! -f "$dir/model.safetensors" ]] && ! lm "$action" "$dir" "$@"; then
        log "FAILED $name ($action): see $dir/$action.log"
        echo "$name $action $dir" >> "$OUT/failed.txt"
        return 0
    fi
    if ! lm evaluate "$dir" model.student="$dir"; then
        log "FAILED $name (evaluate): see $dir/evaluate.log"
        echo "$name evaluate $dir" >> "$OUT/failed.txt"
    fi
}

# 1. tokenizer + pre-trained teacher and student
if [[ ! -f "$ASSETS/pretrain.json" ]]; then
    log "pre-training teacher ($PRETRAIN_TEACHER steps) and student ($PRETRAIN_STUDENT steps)"
    "$PYTHON" configs/studies/lm_pretrain.py "$ASSETS" --teacher-steps "$PRETRAIN_TEACHER" \
        --student-steps "$PRETRAIN_STUDENT" "${PRETRAIN_ARGS[@]}" > "$OUT/pretrain.log" 2>&1 \
        || { log "FAILED pre-training: see $OUT/pretrain.log"; exit 1; }
fi

# 2. teacher: instruction tuning, Rouge-L, mis-instruction ratio (test sets and training rows)
if [[ ! -f "$TEACHER/model.safetensors" ]]; then
    log "teacher SFT ($TEACHER_STEPS steps)"
    lm sft "$TEACHER" model.student="$ASSETS/teacher" train.max_steps="$TEACHER_STEPS" \
        train.seed=0 || { log "FAILED teacher SFT: see $TEACHER/sft.log"; exit 1; }
fi
if [[ ! -f "$TEACHER/eval.json" ]]; then
    log "teacher: Rouge-L + mis-instruction ratio on the test sets"
    lm evaluate "$TEACHER" model.student="$TEACHER" model.teacher="$TEACHER" \
        evaluate.misinstruction=true || echo "teacher evaluate $TEACHER" >> "$OUT/failed.txt"
fi
if [[ ! -f "$TEACHER/misinstruction-train/eval.json" ]]; then
    log "teacher: mis-instruction ratio on the first $EVAL_LIMIT training rows"
    lm evaluate "$TEACHER/misinstruction-train" model.student="$TEACHER" \
        model.teacher="$TEACHER" evaluate.misinstruction=true "data.test_files=[$TRAIN_FILE]" \
        "generation.modes=[greedy]" \
        || echo "teacher-train evaluate $TEACHER/misinstruction-train" >> "$OUT/failed.txt"
fi
# the pre-trained student before any instruction tuning: a floor for the table
if [[ ! -f "$OUT/student-pretrained/eval.json" ]]; then
    log "pre-trained student (no instruction tuning): Rouge-L"
    lm evaluate "$OUT/student-pretrained" model.student="$ASSETS/student" \
        || echo "student-pretrained evaluate $OUT/student-pretrained" >> "$OUT/failed.txt"
fi

# 3. the students
for seed in $SEEDS; do
    common=(model.student="$ASSETS/student" train.max_steps="$STEPS" train.seed="$seed")
    kd=("${common[@]}" model.teacher="$TEACHER")
    want sft && cell "sft/s$seed" "$OUT/sft/seed$seed" sft "${common[@]}"
    want seqkd && cell "seqkd/s$seed" "$OUT/seqkd/seed$seed" seqkd "${kd[@]}" \
        seqkd.generated_file="$OUT/seqkd_train.jsonl"
    want kd && cell "kd/s$seed" "$OUT/kd/seed$seed" distill "${kd[@]}"
    if want kd_loca; then
        for a in $LOCA_ALPHAS; do
            cell "kd_loca$a/s$seed" "$OUT/kd_loca$a/seed$seed" distill "${kd[@]}" \
                distill.loca_alpha="$a"
        done
    fi
    want kd_ls && cell "kd_ls/s$seed" "$OUT/kd_ls/seed$seed" distill "${kd[@]}" \
        distill.standardize=true
done

# 4. the table
log "collecting"
"$PYTHON" configs/studies/lm_collect.py "$OUT" --baseline kd | tee "$OUT/collect.log"
if [[ -s "$OUT/failed.txt" ]]; then
    log "failed cells:"
    cat "$OUT/failed.txt"
fi
log "done in $(($(date +%s) - START)) s"
