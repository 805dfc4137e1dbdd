#!/bin/bash
# Submit a paraphrase augmentation: a job array of N shards (slurm/augment.sbatch), then the
# merge (slurm/augment_merge.sbatch) as a job that runs only if every shard succeeded
# (--dependency=afterok). Prints the two job ids ("ARRAY_ID MERGE_ID") on stdout.
#
#   slurm/augment.sh [-n SHARDS] [-p MAX_PARALLEL] INPUT OUT_DIR OUTPUT [coin augment options ...]
#   slurm/augment.sh -n 16 data/flan.jsonl runs/aug runs/aug.jsonl \
#       --backend templates --templates data/flan_v2_patterns.json
#
# Extra sbatch options for both jobs (account, partition, log paths, ...) go in SBATCH_OPTS,
# e.g. SBATCH_OPTS="--account=abc --partition=cpu"; sbatch's own SBATCH_* input variables work too.
set -euo pipefail

usage="usage: $0 [-n SHARDS] [-p MAX_PARALLEL] INPUT OUT_DIR OUTPUT [coin augment options ...]"
shards=8
parallel=
while getopts "n:p:h" opt; do
    case $opt in
        n) shards=$OPTARG ;;
        p) parallel=$OPTARG ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [[ $# -lt 3 ]] || ! [[ $shards =~ ^[1-9][0-9]*$ ]]; then
    echo "$usage" >&2
    exit 2
fi
input=$1
out_dir=$2
output=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
read -r -a extra <<< "${SBATCH_OPTS:-}"

array="0-$((shards - 1))${parallel:+%$parallel}"
array_id=$(sbatch --parsable "${extra[@]}" --array="$array" "$here/augment.sbatch" "$input" "$out_dir" "$@")
array_id=${array_id%%;*}  # --parsable prints "id" or "id;cluster"
if ! merge_id=$(sbatch --parsable "${extra[@]}" --dependency="afterok:$array_id" --kill-on-invalid-dep=yes \
        "$here/augment_merge.sbatch" "$out_dir" "$output"); then
    echo "$0: submitting the merge failed; cancelling array job $array_id" >&2
    scancel "$array_id"
    exit 1
fi
merge_id=${merge_id%%;*}
echo "submitted: array job $array_id ($shards shards), merge job $merge_id (after every shard succeeded)" >&2
echo "$array_id $merge_id"
