#!/bin/bash
cd /work/main
for round in 1 2; do
  for side in before after; do
    if [ $side = before ]; then dir=.cache/ab/a30c5ac; else dir=.cache/ab/d397520; fi
    (cd $dir && timeout 1500 deno run -A bench/farm_bench.ts --quick --projects lua --contenders local,termite-native --runs 1 --cold-runs 1 --round-trips 0 --scaling "" --out-dir /work/farmab/$side-$round > /work/farmab/$side-$round.log 2>&1)
    echo "$side-$round exit $?" >> /work/farmab/done.txt
  done
done
echo ALLDONE >> /work/farmab/done.txt
