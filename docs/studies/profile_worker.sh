#!/bin/bash
# Profile `anomalyd run` end to end with py-spy while bench/e2e.py feeds it batches of 100.
cd /work/main
.venv/bin/python bench/e2e.py --delivery at_least_once --anomalous-every 0 --single-ticks 5 --batch-ticks 1500 --seconds 2 --json > ${OUT:-/tmp}/prof_e2e.json 2> ${OUT:-/tmp}/prof_e2e.err &
B=$!
# wait for the batch phase's worker (the second `detector run` started)
seen=0; pid=""
for i in $(seq 1 600); do
  p=$(pgrep -f "python.* -m detector run" | head -1)
  if [ -n "$p" ] && [ "$p" != "$last" ]; then seen=$((seen+1)); last=$p; fi
  if [ $seen -ge 2 ]; then pid=$p; break; fi
  sleep 0.2
done
sleep 8  # past start-up and model load
echo "profiling pid $pid"
.venv/bin/py-spy record --pid $pid --duration 20 --rate 200 --format raw -o ${OUT:-/tmp}/prof.raw --nonblocking 2>&1 | tail -2
wait $B
cat ${OUT:-/tmp}/prof_e2e.json
