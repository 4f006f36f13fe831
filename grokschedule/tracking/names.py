"""The names a reviewer meets in MLflow: tags, metrics and artifact paths, in one place so the
logger, the report and the tests agree on them."""

PARENT_KEY = "sweep"  # local run key of the sweep's parent run

# tags on every run of a sweep
ROLE = "grok.role"  # "sweep" or "trial"
SWEEP_ID = "grok.sweep_id"
RUN_KEY = "grok.run_key"  # "<sweep id>/<local key>": finds a run again after a lost reply
PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own: nests trial runs under the sweep run
# MLflow's context tags (mlflow.user, mlflow.source.*), resolved once per sweep on the driver
USER, SOURCE_NAME, SOURCE_TYPE = "mlflow.user", "mlflow.source.name", "mlflow.source.type"
GIT_COMMIT = "mlflow.source.git.commit"

# experiment tag: MLflow 3's UI opens an experiment without it on its (empty) GenAI traces page
EXPERIMENT_KIND = "mlflow.experimentKind"
CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"  # runs, metrics and artifacts
# trial tags while running
PHASE = "grok.phase"
LAST_DECISION = "grok.last_decision"
# trial tags at the end
FINAL_PHASE = "grok.final_phase"
VERDICT = "grok.verdict"  # "<KIND>: <reason>" of the last decision
OUTCOME = "grok.outcome"  # "grokked at step N" / "stopped at step N: reason" / ...
CATEGORY = "grok.category"  # grokked | stopped | failed | ended
GROK_STEP = "grok.grok_step"
STEPS_USED = "grok.steps_used"
EXTENDED_STEPS = "grok.extended_steps"
KICKS = "grok.kicks"
ROLLBACKS = "grok.rollbacks"
KICKS_APPLIED = "grok.kicks_applied"  # each kick in words, "; "-separated
# sweep tags
SUMMARY = "grok.summary"

# params of the parent run
SETTING_PREFIX = "scheduler."  # scheduler settings: metric, mode, grok_threshold, max_t, ...
SPACE_PREFIX = "search_space."  # one param per searched hyperparameter, its domain as text

# metrics
SCHEDULER_PREFIX = "scheduler/"  # score (via GrokCallback) and the signals behind each decision
SWEEP_PREFIX = "sweep/"  # totals on the parent run

# artifacts
DECISIONS_JSON = "grok/decisions.json"
TIMELINE_MD = "timeline.md"
TIMELINE_HTML = "timeline.html"
CURVES_PNG = "curves.png"
OVERVIEW_PNG = "overview.png"
SUMMARY_MD = "summary.md"
SUMMARY_HTML = "summary.html"
