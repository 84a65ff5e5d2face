#!/bin/bash
# py-spy on the worker of bench/e2e.py's first latency phase (the third `detector run`: every
# reading alerts, an alert storm). Then: python docs/studies/profile_top.py ${OUT:-/tmp}/prof.raw
cd /work/main
.venv/bin/python bench/e2e.py --delivery at_least_once --single-ticks 5 --batch-ticks 10 --rate ${RATE:-10000} --seconds 20 --json > ${OUT:-/tmp}/e2e.json 2> ${OUT:-/tmp}/e2e.err &
B=$!
seen=0; pid=""; last=""
for i in $(seq 1 1200); do
  p=$(pgrep -f "python.* -m detector run" | head -1)
  if [ -n "$p" ] && [ "$p" != "$last" ]; then seen=$((seen+1)); last=$p; fi
  if [ $seen -ge 3 ]; then pid=$p; break; fi
  sleep 0.2
done
sleep 7
echo "profiling pid $pid"
.venv/bin/py-spy record --pid $pid --duration 12 --rate 200 --format raw -o ${OUT:-/tmp}/prof.raw --nonblocking 2>&1 | tail -2
wait $B
cat ${OUT:-/tmp}/e2e.json
