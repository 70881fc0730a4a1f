"""UViM models: oracle, base model, stage I, guiding-code LM, UViM."""

from uvim_keras.models.lm import GuidingCodeLM
from uvim_keras.models.oracle import BaseModel, Oracle
from uvim_keras.models.stage1 import UViMStage1
from uvim_keras.models.uvim import UViM
