# docs/quality.md, session 13 (needs docs/studies/persistence_guard_periods.patch applied).
# fleet_seeds.py with the period search off (the fit's detect_period patched to find nothing)
import runpy, sys
import training.fit
training.fit.detect_period = lambda series, known: None
sys.argv = ["fleet_seeds.py", *sys.argv[1:]]
runpy.run_path("docs/studies/fleet_seeds.py", run_name="__main__")
