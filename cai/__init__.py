"""cai: Constitutional AI data and models.

The pipeline, as `cai/stages.py` lists it: a constitution (`constitution.py`) and prompts (`inputs.py`) ->
critique/revision chains on vLLM (`critique.py`, `generate.py`: SL-CAI data) -> AI-judged preference pairs
(`judge.py`, `judge_run.py`: RL-CAI labels) -> datasets and cards (`export.py`) -> training (`train/`: SFT, DPO,
reward model, PPO) -> evaluation (`model_eval.py`, `judge_eval.py`) -> the report (`report.py`). Every
record-producing stage runs on `runs.py`; `pipeline.py` runs a recipe. Importing `cai` loads no heavy library;
engines import vLLM when created, trainers torch when they run.
"""

from cai.config import EvalConfig, GenerateConfig, JudgeConfig
from cai.constitution import Constitution, ConstitutionError, load_constitution
from cai.engines import EngineConfig, Sampling, create_engine
from cai.errors import CaiError

__version__ = "0.1.0"

__all__ = ["CaiError", "Constitution", "ConstitutionError", "EngineConfig", "EvalConfig", "GenerateConfig",
           "JudgeConfig", "Sampling", "create_engine", "load_constitution"]
