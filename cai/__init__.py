"""cai: Constitutional AI data and models.

The pipeline, one module a stage: `constitution` (principles) -> `critique`/`generate` (SL-CAI on vLLM) ->
`export` (Hugging Face datasets). Importing `cai` loads no heavy library; engines import vLLM when created.
"""

from cai.config import GenerateConfig
from cai.constitution import Constitution, ConstitutionError, load_constitution
from cai.engines import EngineConfig, Sampling, create_engine

__version__ = "0.1.0"

__all__ = ["Constitution", "ConstitutionError", "EngineConfig", "GenerateConfig", "Sampling", "create_engine",
           "load_constitution"]
